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

/// Every manifest under deploy/kubernetes, parsed: the documents of each file.
fn kubernetes_manifests() -> Vec<(String, yaml_rust2::Yaml)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = yaml_rust2::YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in parsed {
            docs.push((name.clone(), doc));
        }
    }
    docs
}

#[test]
fn the_kubernetes_manifests_parse_and_name_what_the_rollout_needs() {
    let docs = kubernetes_manifests();
    let kinds: Vec<&str> = docs
        .iter()
        .filter_map(|(_, d)| d["kind"].as_str())
        .collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let (_, deployment) = docs
        .iter()
        .find(|(_, d)| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert!(!container["lifecycle"]["preStop"].is_badvalue());
    assert!(!container["resources"]["requests"]["cpu"].is_badvalue());
    // The worker Service is headless and publishes pods before they are Ready: syncgate's
    // key-sync gate decides, not the kubelet's probe.
    let workers = docs
        .iter()
        .find(|(_, d)| {
            d["kind"].as_str() == Some("Service") && d["spec"]["clusterIP"].as_str() == Some("None")
        })
        .map(|(_, d)| d)
        .expect("a headless worker Service");
    assert_eq!(
        workers["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
}

#[test]
fn the_config_embedded_in_the_kubernetes_configmap_passes_check() {
    let docs = kubernetes_manifests();
    let (_, configmap) = docs
        .iter()
        .find(|(_, d)| d["kind"].as_str() == Some("ConfigMap"))
        .unwrap();
    let toml = configmap["data"]["syncgate.toml"]
        .as_str()
        .expect("data.syncgate.toml");
    // The projected volume puts the Secret's admin.token beside the config.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, toml).unwrap();
    std::fs::write(
        dir.path().join("admin.token"),
        "a-test-token-of-some-length\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncgate"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("push-workers.push.svc.cluster.local"),
        "{summary}"
    );
}
