//! The pure tests, in one binary that links only `mplink-core`: the decoder's contract and the
//! EventBridge rule the deploy template carries. The ledger's own tests sit beside it in `src/`.

mod decoder;
mod deploy_rule;
mod org_pattern;

/// The repository's root, where the fixtures and the deploy templates live.
fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
