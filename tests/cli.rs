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
        // Flat: fields at the top level, not under "fields".
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        assert!(v.get("fields").is_none(), "{line}");
        if v["message"] == "proxy listening" {
            proxy = v["listen"].as_str().map(str::to_string);
        }
    }
    let proxy: std::net::SocketAddr = proxy.unwrap().parse().unwrap();
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let log = logged.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let v = serde_json::from_str(&line).expect("JSON log line");
            log.lock().unwrap().push(v);
        }
    });
    let logged_message = |message: &str| {
        logged
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
            .collect::<Vec<_>>()
    };
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
    wait_until(Duration::from_secs(5), "the reload is logged", || async {
        !logged_message("config reloaded").is_empty()
    })
    .await;

    // A SIGHUP with the file unchanged logs its outcome too.
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_until(
        Duration::from_secs(5),
        "\"config unchanged\" is logged",
        || async {
            logged_message("config unchanged")
                .iter()
                .any(|v| v["trigger"] == "signal")
        },
    )
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

#[test]
fn the_demo_shows_401s_reaching_clients_behind_a_health_check_and_none_behind_syncgate() {
    let out = Command::new(BIN)
        .args(["demo", "--duration", "8s"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table: a label, then the ordinary run's value, then syncgate's, columns separated by
    // two spaces or more.
    let row = |label: &str| -> (String, String) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(label) && l[label.len()..].starts_with("  "))
            .unwrap_or_else(|| panic!("no row {label:?} in:\n{stdout}"));
        let cells: Vec<&str> = line[label.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), 2, "{line:?}");
        (cells[0].to_owned(), cells[1].to_owned())
    };
    let count = |s: &str| s.parse::<u64>().unwrap_or_else(|e| panic!("{s:?}: {e}"));
    let header = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("ordinary") && l.contains("syncgate"))
        .unwrap_or_else(|| panic!("no table header in:\n{stdout}"));
    assert!(
        header.find("ordinary") < header.find("syncgate"),
        "{header}"
    );

    let (ordinary, gated) = row("requests");
    assert!(count(&ordinary) > 200 && count(&gated) > 200, "{stdout}");
    // Behind an ordinary health check the late worker's 401s reach clients; through syncgate none.
    let (ordinary, gated) = row("401s that reached clients");
    assert!(count(&ordinary) > 0, "{stdout}");
    assert_eq!(count(&gated), 0, "{stdout}");
    let (ordinary, gated) = row("- from worker-new");
    assert!(count(&ordinary) > 0, "{stdout}");
    assert_eq!(count(&gated), 0, "{stdout}");
    // The load started with both pools ready: no cold-start 503s in either run.
    let (ordinary, _) = row("503s that reached clients");
    assert_eq!(count(&ordinary), 0, "{stdout}");
    assert!(
        !stdout.contains("- no ready backend"),
        "cold-start 503s in:\n{stdout}"
    );
    // syncgate admitted the late worker later (after its sync), and still used it.
    let admitted = |s: &str| -> f64 {
        s.trim_end_matches(" s")
            .parse()
            .unwrap_or_else(|e| panic!("{s:?}: {e}\n{stdout}"))
    };
    let (ordinary, gated) = row("worker-new admitted at");
    assert!(admitted(&ordinary) < admitted(&gated), "{stdout}");
    let (_, gated_answers) = row("answered by worker-new");
    assert!(count(&gated_answers) > 0, "{stdout}");
    // The second opinion: worker-2's 401s were contradicted, and it was taken out.
    let (ordinary, gated) = row("401s contradicted by a second worker");
    assert_eq!(ordinary, "no guard");
    assert!(count(&gated) > 0, "{stdout}");
    let (ordinary, gated) = row("worker-2 taken out of rotation");
    assert_eq!(count(&ordinary), 0, "{stdout}");
    assert!(count(&gated) > 0, "{stdout}");
    // During the sync, the joining worker's key count as the probes report it.
    assert!(
        stdout.contains("worker-new key sync, as syncgate's probes see it: "),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_log_written_into_the_config_directory_does_not_feed_the_file_watcher() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    // Probes rarely, so that the log has nothing of its own to say once started.
    let text = pool_config(
        &[("w1", ws[0].addr())],
        "",
        "interval = \"1h\"\ntimeout = \"1s\"\nrise = 1",
    );
    std::fs::write(&path, text).unwrap();
    let log_path = dir.path().join("syncgate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Started, and its first probe done (w1 admitted): nothing is left to log but what the
    // watcher would feed itself.
    wait_until(
        Duration::from_secs(10),
        "syncgate listens, w1 admitted",
        || async {
            let log = read();
            log.contains("proxy listening") && log.contains("backend state changed")
        },
    )
    .await;
    // Each log line is a change in the watched directory. Were the watcher's own trace lines
    // about such changes written, each would be the next change: an endless stream (the issue
    // saw 297,000 lines in 3 s). A bounded quiet period is the assertion here.
    let settled = read().lines().count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = read();
    let grown = later.lines().count() - settled;
    assert!(
        grown < 50,
        "{grown} lines in a quiet second:\n{}",
        tail(&later)
    );
    assert!(!later.contains("config reloaded"), "{}", tail(&later));
    assert!(!later.contains("config unchanged"), "{}", tail(&later));
    // stderr is a file, not a terminal: no colour codes.
    assert!(
        !later.contains('\u{1b}'),
        "ANSI escapes in:\n{}",
        tail(&later)
    );

    let pid = child.id().unwrap().to_string();
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

/// The last lines of a log, for a failure message.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
