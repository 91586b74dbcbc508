//! Build script: the text `--version` prints after the binary's name, `<release> (commit
//! <git commit>)`, as `TRAFORATO_VERSION` (`TRAFORATO_GIT_COMMIT` at build time wins over
//! git: builds from a tarball have no `.git`).
//! `traforato-cli` includes this same file as its build script.

use std::process::Command;

pub fn main() {
    println!("cargo:rerun-if-env-changed=TRAFORATO_GIT_COMMIT");
    let commit = std::env::var("TRAFORATO_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().to_string())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    let release = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=TRAFORATO_VERSION={release} (commit {commit})");
}

/// The abbreviated commit of `HEAD`; `None` outside a git checkout. Asks cargo to run this
/// again when `HEAD` or its branch moves.
fn git_commit() -> Option<String> {
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// `git ARGS` run in the crate's directory: its trimmed output when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
