//! The commands the READMEs print run as printed on a fresh clone: every script they show as a
//! command (`scripts/demo.sh`, `scripts/localstack.sh stop`, …) is tracked by git with its
//! executable bit, which is what a clone gets. The working tree's mode is not enough: a file can
//! be executable here and 100644 in git.

use std::path::Path;
use std::process::Command;

/// Every page that prints commands: the READMEs and the guides under `docs/`.
const DOCS: [&str; 13] = [
    "README.md",
    "deploy/README.md",
    "docs/deploy.md",
    "docs/entitlements.md",
    "docs/events.md",
    "docs/http-api.md",
    "docs/metering.md",
    "docs/operations.md",
    "docs/performance.md",
    "docs/reconcile.md",
    "docs/reliability.md",
    "docs/testing.md",
    "docs/webhooks.md",
];

/// The first word of every command the markdown shows that names a program of the repository:
/// lines of fenced code blocks and inline code spans starting with `scripts/`, `.ci/` or `./`,
/// naming a `.sh` file or one without an extension (`requirements.txt` is mentioned, not run).
fn commands(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut take = |snippet: &str| {
        let first = snippet.split_whitespace().next().unwrap_or("");
        let local = ["scripts/", ".ci/", "./"]
            .iter()
            .any(|p| first.starts_with(p));
        let name = first.rsplit('/').next().unwrap_or("");
        let program = name.ends_with(".sh") || !name.contains('.');
        if local && program && !first.contains('$') {
            let path = first.trim_start_matches("./").to_string();
            if !found.contains(&path) {
                found.push(path);
            }
        }
    };
    let mut in_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            take(line);
            continue;
        }
        // Inline code spans: the odd-numbered pieces between backticks.
        for span in line.split('`').skip(1).step_by(2) {
            take(span);
        }
    }
    found
}

/// The paths among `paths` that git does not track as executable (100755), with their mode.
fn not_executable_in_git(paths: &[String]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    paths
        .iter()
        .filter_map(|path| {
            let out = Command::new("git")
                .current_dir(root)
                .args(["ls-files", "--stage", "--", path])
                .output()
                .expect("run git ls-files");
            assert!(out.status.success(), "git ls-files failed for {path}");
            let line = String::from_utf8_lossy(&out.stdout);
            let mode = line.split_whitespace().next().unwrap_or("untracked");
            (mode != "100755").then(|| format!("{path} (git mode {mode})"))
        })
        .collect()
}

#[test]
fn every_script_the_readmes_print_is_executable_in_git() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(root.join(doc)).expect("read the README");
        all.extend(commands(&text));
    }
    // The README's two commands at least: an extraction that finds nothing proves nothing.
    for must in ["scripts/demo.sh", "scripts/test.sh"] {
        assert!(
            all.iter().any(|c| c == must),
            "{must} not found among {all:?}"
        );
    }
    let bad = not_executable_in_git(&all);
    assert!(
        bad.is_empty(),
        "commands the READMEs print that a fresh clone cannot run (fix with \
         `git update-index --chmod=+x PATH`): {bad:?}"
    );
}

#[test]
fn the_check_catches_a_file_without_its_executable_bit() {
    let markdown = "Run `scripts/test.sh` (see `scripts/localstack/requirements.txt`) or:\n\n\
                    ```sh\ndeploy/Dockerfile --x\n./scripts/localstack/requirements\n\
                    scripts/no-such-script.sh\n$B status\n```\n";
    let found = commands(markdown);
    assert_eq!(
        found,
        [
            "scripts/test.sh",
            "scripts/localstack/requirements",
            "scripts/no-such-script.sh"
        ],
        "deploy/ is not a command prefix, a .txt is not a program, $-commands are skipped"
    );
    // A tracked file without its executable bit, and a script git does not have.
    let paths = ["deploy/Dockerfile".to_string(), found[2].clone()];
    assert_eq!(
        not_executable_in_git(&paths),
        [
            "deploy/Dockerfile (git mode 100644)",
            "scripts/no-such-script.sh (git mode untracked)"
        ]
    );
}

#[test]
fn every_guide_under_docs_is_checked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut guides: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok())
        .map(|e| format!("docs/{}", e.file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    guides.sort();
    let listed: Vec<String> = DOCS
        .iter()
        .filter(|d| d.starts_with("docs/"))
        .map(|d| d.to_string())
        .collect();
    assert_eq!(guides, listed, "DOCS must list every guide under docs/");
}

/// Every path the README's Layout table names exists: the table follows the tree.
#[test]
fn the_layout_names_only_paths_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let layout = readme
        .split("\n## Layout\n")
        .nth(1)
        .expect("the README has a Layout section");
    let mut checked = 0;
    for line in layout.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = line.split('|').nth(1).unwrap_or("");
        let paths: Vec<&str> = first_cell.split('`').skip(1).step_by(2).collect();
        // `crates/x/src/notify.rs`, `redrive.rs`: later names in a cell sit beside the first.
        let dir = paths
            .first()
            .map(|p| Path::new(p).parent().unwrap_or(Path::new("")).to_path_buf())
            .unwrap_or_default();
        for (i, path) in paths.iter().enumerate() {
            let full = if i == 0 || path.contains('/') {
                root.join(path)
            } else {
                root.join(&dir).join(path)
            };
            assert!(
                full.exists(),
                "the Layout names {path}, which is not in the tree"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} paths found in the Layout table"
    );
}

#[test]
fn the_readme_is_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines = std::fs::read_to_string(root.join("README.md"))
        .expect("README.md")
        .lines()
        .count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines; reference material goes to docs/"
    );
}
