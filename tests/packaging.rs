//! What packagers and operators install beside the binary: shell completions, the manual page,
//! and a `--version` that names the commit.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_syncgate");

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "syncgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let v = stdout_of(&["--version"]);
    assert!(
        v.starts_with(&format!("syncgate {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    let commit = v
        .trim_end()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap();
    // A checkout gives 12 hex digits; a build without git says so instead of guessing.
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{v}"
    );
}

#[test]
fn completions_cover_every_subcommand_in_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        for sub in ["run", "check", "demo", "completions", "man"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        // `--config` in bash and zsh, `-l config` in fish.
        assert!(
            script.contains("--config") || script.contains("-l config"),
            "{shell} completion lacks the config option"
        );
    }
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("complete -F _syncgate"), "{bash}");
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bash") && err.contains("fish"), "{err}");
}

#[test]
fn the_manual_page_is_roff_for_section_1() {
    let man = stdout_of(&["man"]);
    assert!(man.contains(".TH syncgate 1"), "{man}");
    assert!(man.contains(".SH NAME"), "{man}");
    assert!(man.contains("readiness"), "{man}");
}
