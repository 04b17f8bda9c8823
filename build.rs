//! Records the commit syncgate is built from, for `syncgate --version`.
//!
//! Read from git when the source is a checkout; `SYNCGATE_COMMIT` in the environment wins (a
//! container build copies the source without `.git` and passes it in), and "unknown" is the
//! fallback, so a build never fails for want of git.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SYNCGATE_COMMIT");
    let commit = std::env::var("SYNCGATE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rerun when HEAD moves (a commit, a checkout). In a worktree `.git` is a file, so git
    // says where its files are. Only existing files are named: cargo reruns the script on
    // every build for a missing one, and that would rebuild the crate each time.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rustc-env=SYNCGATE_COMMIT={commit}");
}
