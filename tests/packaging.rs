//! What packagers and operators install beside the binary: shell completions, the manual page,
//! a `--version` that names the commit, and the systemd unit's notify protocol.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_syncgate"))
        .args(args)
        .output()
        .unwrap();
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
    let out = Command::new(env!("CARGO_BIN_EXE_syncgate"))
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

/// Reads the next datagram on the notify socket, within a deadline.
async fn next_notification(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("a notification within 10 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// `contrib/systemd/syncgate.service` is `Type=notify` with `ExecReload` sending SIGHUP: the
/// daemon must say READY=1 once it serves, RELOADING=1 then READY=1 around a reload, and
/// STOPPING=1 when SIGTERM begins the drain, in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tells_a_notify_socket_ready_reloading_ready_stopping_in_order() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, pool_config(&[("w1", ws[0].addr())], "", "")).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncgate"))
        .args(["run", "--config", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    assert!(next_notification(&sock).await.contains("READY=1"));
    signal(pid, "-HUP");
    let reloading = next_notification(&sock).await;
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    // systemd (notify-reload) requires the monotonic time the reload began.
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert!(next_notification(&sock).await.contains("READY=1"));
    signal(pid, "-TERM");
    assert!(next_notification(&sock).await.contains("STOPPING=1"));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
