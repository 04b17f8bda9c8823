//! The command line as an operator uses it: `check`, `run` with SIGHUP and SIGTERM, `demo`.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_syncgate");

#[test]
fn check_accepts_the_example_config() {
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pool push"), "{stdout}");
    assert!(stdout.contains("worker-1"), "{stdout}");
    assert!(
        stdout.contains("route push.example.com/ -> push"),
        "{stdout}"
    );
}

#[test]
fn check_summary_spells_balance_and_contract_as_the_config_file_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pools.toml");
    std::fs::write(
        &path,
        "[pools.a]\nbalance = \"round_robin\"\n[pools.a.probe]\ncontract = \"status\"\n\
         [[pools.a.backends]]\nname = \"a1\"\naddr = \"127.0.0.1:9001\"\n\
         [pools.b]\nbackends = [{ name = \"b1\", addr = \"127.0.0.1:9002\" }]\n\
         [pools.c]\nbalance = \"hash\"\nbackends = [{ name = \"c1\", addr = \"127.0.0.1:9003\" }]\n\
         [[routes]]\nhost = \"a.example.com\"\npool = \"a\"\n\
         [[routes]]\nhost = \"c.example.com\"\npool = \"c\"\n\
         [[routes]]\npool = \"b\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "pool a: round_robin, probe /ready every 1s (status), 1 backend(s)",
        "pool b: p2c, probe /ready every 1s (key-sync), 1 backend(s)",
        "pool c: hash, probe /ready every 1s (key-sync), 1 backend(s)",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line:?} in {stdout}");
    }
}

#[test]
fn check_accepts_a_probe_timeout_above_the_interval_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.toml");
    std::fs::write(
        &path,
        "[pools.push.probe]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n\
         [[pools.push.backends]]\nname = \"w1\"\naddr = \"127.0.0.1:9001\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("note: probe timeout 500ms exceeds the interval 200ms"),
        "{stdout}"
    );
}

#[test]
fn check_prints_every_error_with_its_position_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[pools.push.probe]\nrise = 0\n\n[[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.1\"\n\n[[routes]]\npool = \"pushh\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    assert!(stderr.contains(&format!("{p}:2:8: ")), "{stderr}");
    assert!(stderr.contains(&format!("{p}:6:8: ")), "{stderr}");
    assert!(stderr.contains(&format!("{p}:9:8: ")), "{stderr}");
    assert!(stderr.contains("pushh"), "{stderr}");
}

/// Runs `syncgate check` on `path`; fails the test if it has not finished within 10 s.
fn check_within_deadline(path: &std::path::Path) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("check did not finish within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn check_refuses_a_fifo_and_a_device_at_once_and_places_invalid_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("token");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let pool = "[[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.1:9000\"\n";
    for (file, name) in [(fifo.to_str().unwrap(), "FIFO"), ("/dev/zero", "device")] {
        let path = dir.path().join("a.toml");
        std::fs::write(&path, format!("[admin]\ntoken_file = \"{file}\"\n{pool}")).unwrap();
        let out = check_within_deadline(&path);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "a.toml:2:14: admin.token_file \"{file}\" is not a regular file"
            )),
            "{name}: {stderr}"
        );
    }
    let path = dir.path().join("latin1.toml");
    std::fs::write(&path, b"# caf\xe9\n[server]\n").unwrap();
    let out = check_within_deadline(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("latin1.toml:1:6: invalid UTF-8 (byte 0xe9)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_on_sighup_and_stops_cleanly_on_sigterm() {
    let ws = workers(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    // No fixed ports: the proxy binds :0 and its address is read from the startup log.
    let text = |name: &str, addr| pool_config(&[(name, addr)], "", "");
    std::fs::write(&path, text("w1", ws[0].addr())).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The bound proxy address is in the startup log.
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut proxy = None;
    while proxy.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("startup log")
            .unwrap()
            .expect("log line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["fields"]["message"] == "proxy listening" {
            proxy = v["fields"]["listen"].as_str().map(str::to_string);
        }
    }
    let proxy: std::net::SocketAddr = proxy.unwrap().parse().unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let c = client();
    wait_until(Duration::from_secs(5), "w1 serves", || async {
        get(&c, proxy, 1).await.status == 200 && ws[0].requests() > 0
    })
    .await;

    // The file now names w2 only. File watching would see it too; SIGHUP must reload at once.
    std::fs::write(&path, text("w2", ws[1].addr())).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until(Duration::from_secs(5), "w2 serves after reload", || async {
        get(&c, proxy, 1).await.status == 200 && ws[1].requests() > 0
    })
    .await;

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_lets_no_401_through_and_admits_the_late_worker() {
    let report = syncgate::demo::run(syncgate::demo::DemoOptions {
        duration: Duration::from_secs(5),
        clients: 4,
        late_join_after: Duration::from_millis(500),
        late_sync_takes: Duration::from_millis(1500),
        verbose: false,
    })
    .await
    .unwrap();
    assert!(report.requests > 100, "{report:?}");
    assert_eq!(report.unauthorized(), 0, "{report:?}");
    assert!(report.late_worker_admitted, "{report:?}");
    assert!(
        report.by_worker.get("worker-new").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
}
