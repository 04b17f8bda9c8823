//! Restarts and upgrades without a failed request: a second syncgate on the same addresses is
//! refused unless it is started with `--takeover`, and a takeover under load, with the old
//! instance stopped once the new one is ready, fails no client request.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_syncgate");

/// A config whose proxy listens on `listen` (admin on a port of its own).
fn config_on(listen: SocketAddr, workers: &[(&str, SocketAddr)]) -> String {
    pool_config(workers, "", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{listen}\"]"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_address_is_refused_without_takeover() {
    let ws = workers(1).await;
    let first = start(&pool_config(&[("w1", ws[0].addr())], "", "")).await;
    let taken = first.proxy_addrs()[0];
    let second = syncgate::Config::parse(&config_on(taken, &[("w1", ws[0].addr())]), None)
        .expect("valid config");
    let err = syncgate::start(second)
        .await
        .expect_err("the address is in use");
    let message = err.to_string();
    assert!(
        message.contains(&taken.to_string()) && message.contains("--takeover"),
        "{message}"
    );
    // The running instance is unharmed.
    wait_state(&first, "w1", syncgate::State::Ready).await;
    assert_eq!(get(&client(), taken, 1).await.status, 200);
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_listens_only_once_its_pools_have_a_ready_backend() {
    let ws = workers(1).await;
    let first = start(&pool_config(&[("w1", ws[0].addr())], "", "")).await;
    let shared_addr = first.proxy_addrs()[0];
    // The worker is not ready for a while: the successor must not listen before it is.
    ws[0].set_probe_override(Some((503, "{\"key_sync\": {\"complete\": false}}".into())));

    let config = syncgate::Config::parse(&config_on(shared_addr, &[("w1", ws[0].addr())]), None)
        .expect("valid config");
    let started = tokio::time::Instant::now();
    let (second, ()) = tokio::join!(
        syncgate::start_with(config, syncgate::StartOptions { takeover: true }),
        async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            ws[0].set_probe_override(None);
        }
    );
    let second = second.expect("a takeover shares the address");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "listened after {:?}, before its pool could be ready",
        started.elapsed()
    );
    assert_eq!(second.proxy_addrs()[0], shared_addr);
    assert_eq!(
        second
            .shared()
            .snapshot()
            .backends()
            .next()
            .map(|b| b.state()),
        Some(syncgate::State::Ready)
    );
    first.shutdown().await;
    // The old instance is gone: every request is the successor's.
    let c = client();
    for key in 0..20 {
        assert_eq!(get(&c, shared_addr, key).await.status, 200);
    }
    second.shutdown().await;
}

/// A `syncgate run` process, its proxy address read from its JSON startup log.
struct Process {
    child: tokio::process::Child,
    proxy: SocketAddr,
}

async fn run(
    config: &std::path::Path,
    takeover: bool,
    notify: Option<&std::path::Path>,
) -> Process {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args([
        "run",
        "--config",
        config.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    if takeover {
        cmd.arg("--takeover");
    }
    if let Some(sock) = notify {
        cmd.env("NOTIFY_SOCKET", sock);
    }
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let proxy = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("startup log")
            .unwrap()
            .expect("a log line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let fields = if v["fields"].is_object() {
            &v["fields"]
        } else {
            &v
        };
        if fields["message"] == "proxy listening" {
            break fields["listen"].as_str().unwrap().parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Process { child, proxy }
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_under_load_fails_no_request_while_the_old_instance_drains() {
    let ws = workers(2).await;
    let named = named(&ws);
    let dir = tempfile::tempdir().unwrap();
    let old_config = dir.path().join("old.toml");
    std::fs::write(&old_config, pool_config(&refs(&named), "", "")).unwrap();
    let mut old = run(&old_config, false, None).await;
    let addr = old.proxy;
    let c = client();
    wait_until(
        Duration::from_secs(10),
        "the old instance serves",
        || async {
            let req = http::Request::get(format!("http://{addr}/v1/batch"))
                .header("authorization", "Bearer key-1")
                .body(Full::new(Bytes::new()))
                .unwrap();
            matches!(c.request(req).await, Ok(r) if r.status().is_success())
        },
    )
    .await;

    // Clients push all along, each on its keep-alive connection, as agents do.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for task in 0..8u64 {
        let (stop, ok, failed, failures) =
            (stop.clone(), ok.clone(), failed.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let mut key = task;
            while !stop.load(Ordering::Relaxed) {
                key += 8;
                let req = http::Request::post(format!("http://{addr}/v1/batch"))
                    .header("authorization", format!("Bearer key-{}", key % 100))
                    .body(Full::new(Bytes::from_static(b"{\"events\": [1, 2, 3]}")))
                    .unwrap();
                let outcome = match c.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.into_body().collect().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(_) => Err(format!("status {status}")),
                            Err(e) => Err(format!("body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("{e:?}")),
                };
                match outcome {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    wait_until(
        Duration::from_secs(10),
        "traffic through the old instance",
        || async { ok.load(Ordering::Relaxed) > 200 },
    )
    .await;

    // The new instance, on the same address, says READY=1 once its probes admitted workers.
    let new_config = dir.path().join("new.toml");
    std::fs::write(&new_config, config_on(addr, &refs(&named))).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut new = run(&new_config, true, Some(&notify_path)).await;
    assert_eq!(new.proxy, addr);
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(20), notify.recv(&mut buf))
        .await
        .expect("READY=1 from the new instance")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    // Both serve for a moment; then the old one is stopped and drains.
    let before_stop = ok.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(10),
        "traffic while both listen",
        || async { ok.load(Ordering::Relaxed) > before_stop + 200 },
    )
    .await;
    signal(&old.child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), old.child.wait())
        .await
        .expect("the old instance exits after draining")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    // Only the new instance is left; clients keep going.
    let after_exit = ok.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(10),
        "traffic through the new instance alone",
        || async { ok.load(Ordering::Relaxed) > after_exit + 500 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the takeover: {:?}",
        failures.lock().unwrap()
    );
    signal(&new.child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), new.child.wait())
        .await
        .expect("the new instance exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
