//! The `mplink` binary as a test runs it: on the test's database, with nothing of the caller's
//! environment that would point it elsewhere, and its stdout once it succeeded.

use super::TestDb;
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// `mplink --database-url <db>`, ready for its arguments.
pub fn mplink_command(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mplink"));
    cmd.arg("--database-url")
        .arg(db.url.expose())
        .env_remove("DATABASE_URL")
        .env_remove("MPLINK_DATABASE_URL")
        .env_remove("MPLINK_WEBHOOK_URLS")
        .env_remove("MPLINK_WEBHOOK_SECRETS");
    cmd
}

/// Runs `mplink <args>` on `db` with `env` set and `stdin` written to it (closed at once if none).
pub fn run_mplink(db: &TestDb, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut child = mplink_command(db)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mplink");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("mplink output")
}

/// The stdout of a run that succeeded; the whole output in the panic otherwise.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "mplink failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("mplink's stdout is UTF-8")
}
