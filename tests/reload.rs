//! Hot reload end to end, against the real file system: every trigger kind, state carried
//! over by identity, draining, bad files, config identity, and reloads under load.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use syncgate::demo::{SimOptions, SimWorker};
use syncgate::Config;
use syncgate::Running;
use syncgate::State;

use support::*;

const SECS5: Duration = Duration::from_secs(5);

fn config_text(backends: &[(&str, SocketAddr, u32)], extra_pool: &str) -> String {
    let mut s = pool_config(&[], extra_pool, "rise = 2");
    for (name, addr, weight) in backends {
        s.push_str(&format!(
            "\n[[pools.push.backends]]\nname = \"{name}\"\naddr = \"{addr}\"\nweight = {weight}\n"
        ));
    }
    s
}

async fn start_file(path: &Path) -> Running {
    syncgate::start(Config::load(path).expect("valid config"))
        .await
        .expect("starts")
}

fn generation(running: &Running) -> u64 {
    running.control().status().generation
}

async fn wait_generation(running: &Running, g: u64) {
    wait_until(SECS5, &format!("generation {g}"), || async {
        generation(running) == g
    })
    .await;
}

/// Writes `text` to a temporary file and renames it over `path`, as editors and config
/// management tools do.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_and_rename_over_are_seen_and_state_carries_over() {
    let ws = workers(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, config_text(&[("w1", ws[0].addr(), 1)], "")).unwrap();
    let running = start_file(&path).await;
    wait_state(&running, "w1", State::Ready).await;
    let w1_before = running
        .shared()
        .snapshot()
        .backends()
        .next()
        .unwrap()
        .clone();
    assert_eq!(generation(&running), 1);
    let sha1 = running.control().status().sha256;

    // Written in place: w2 is added, w1 keeps its state object (still ready, same identity).
    std::fs::write(
        &path,
        config_text(&[("w1", ws[0].addr(), 1), ("w2", ws[1].addr(), 1)], ""),
    )
    .unwrap();
    wait_generation(&running, 2).await;
    let snap = running.shared().snapshot();
    let w1_after = snap.backends().find(|b| &*b.name == "w1").unwrap();
    assert!(
        Arc::ptr_eq(&w1_before, w1_after),
        "w1 lost its state object"
    );
    assert_eq!(w1_after.state(), State::Ready);
    wait_state(&running, "w2", State::Ready).await;
    assert_ne!(running.control().status().sha256, sha1);

    // Renamed over: a weight change applies at once.
    rename_over(
        &path,
        &config_text(&[("w1", ws[0].addr(), 5), ("w2", ws[1].addr(), 1)], ""),
    );
    wait_generation(&running, 3).await;
    let snap = running.shared().snapshot();
    assert_eq!(
        snap.backends().find(|b| &*b.name == "w1").unwrap().weight(),
        5
    );
    assert!(Arc::ptr_eq(
        &w1_before,
        snap.backends().find(|b| &*b.name == "w1").unwrap()
    ));

    // Identical bytes: no new generation.
    let same = std::fs::read_to_string(&path).unwrap();
    rename_over(&path, &same);
    assert_eq!(running.control().reload("api").await.unwrap(), 3);
    assert_eq!(generation(&running), 3);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_symlink_swap_is_seen() {
    let ws = workers(2).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Kubernetes layout: config.toml -> ..data/config.toml, ..data -> ..v1
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(
        root.join("..v1/config.toml"),
        config_text(&[("w1", ws[0].addr(), 1)], ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", root.join("config.toml")).unwrap();
    let path: PathBuf = root.join("config.toml");
    let running = start_file(&path).await;
    wait_state(&running, "w1", State::Ready).await;

    std::fs::create_dir(root.join("..v2")).unwrap();
    std::fs::write(
        root.join("..v2/config.toml"),
        config_text(&[("w2", ws[1].addr(), 1)], ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    wait_generation(&running, 2).await;
    wait_state(&running, "w2", State::Ready).await;
    assert!(state_of(&running, "w1").is_none(), "w1 left the snapshot");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_the_symlinked_file_is_seen() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    // syncgate.toml -> prod.toml, and prod.toml is what the operator edits in place.
    let text = config_text(&[("w1", ws[0].addr(), 1)], "");
    std::fs::write(dir.path().join("prod.toml"), &text).unwrap();
    std::os::unix::fs::symlink("prod.toml", dir.path().join("syncgate.toml")).unwrap();
    let running = start_file(&dir.path().join("syncgate.toml")).await;
    std::fs::write(
        dir.path().join("prod.toml"),
        text.replace("weight = 1", "weight = 5"),
    )
    .unwrap();
    wait_generation(&running, 2).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_change_nothing_and_report_the_error() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    let good = config_text(&[("w1", ws[0].addr(), 1)], "");
    std::fs::write(&path, &good).unwrap();
    let running = start_file(&path).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    let c = client();

    let cases: Vec<(&str, String)> = vec![
        ("invalid toml", "[server\nlisten = 1".to_string()),
        ("schema error", good.replace("rise = 2", "rise = 0")),
        (
            "unknown key",
            good.replace("[pools.push]", "[pools.push]\nbalanse = \"p2c\""),
        ),
        ("empty file", String::new()),
        ("half written", good[..good.len() / 2].to_string()),
    ];
    for (i, (what, text)) in cases.into_iter().enumerate() {
        let failed = i as u64 + 1;
        std::fs::write(&path, &text).unwrap();
        wait_until(SECS5, what, || async {
            running.control().status().reloads_failed == failed
        })
        .await;
        let status = running.control().status();
        let err = status.last_error.expect("last_error is kept");
        assert!(!err.errors.is_empty(), "{what}");
        let shown = err.errors[0].to_string();
        assert!(
            shown.starts_with(&format!("{}:", path.display())),
            "{what}: {shown}"
        );
        assert_eq!(status.generation, 1, "{what} changed the running config");
        assert_eq!(
            get(&c, proxy, 1).await.status,
            200,
            "{what} disturbed traffic"
        );
    }
    // Each bad write was one failure: the reload's own reads of the file must not trigger
    // another (an observation window, not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(running.control().status().reloads_failed, 5);
    // A missing file.
    std::fs::remove_file(&path).unwrap();
    let errors = running.control().reload("api").await.unwrap_err();
    assert!(errors[0].message.contains("cannot read"), "{}", errors[0]);
    // The watcher sees the removal too, and its failed reload may be the last one.
    let trigger = running.control().status().last_error.unwrap().trigger;
    assert!(["api", "file"].contains(&trigger), "{trigger}");
    assert_eq!(get(&c, proxy, 1).await.status, 200);
    // The running config's own bytes restored: nothing new to apply, and the error is gone.
    std::fs::write(&path, &good).unwrap();
    wait_until(SECS5, "the error cleared", || async {
        running.control().status().last_error.is_none()
    })
    .await;
    assert_eq!(generation(&running), 1);
    // The next good file loads normally.
    std::fs::write(
        &path,
        good.replace("retries = 2", "")
            .replace("[pools.push]", "[pools.push]\nretries = 1"),
    )
    .unwrap();
    wait_generation(&running, 2).await;
    assert!(running.control().status().last_error.is_none());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_device_named_by_the_config_fails_the_reload_and_the_next_one_runs() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    let good = config_text(&[("w1", ws[0].addr(), 1)], "");
    std::fs::write(&path, &good).unwrap();
    let running = start_file(&path).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    let fifo = dir.path().join("token.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (i, file) in [fifo.to_str().unwrap(), "/dev/zero"]
        .into_iter()
        .enumerate()
    {
        std::fs::write(
            &path,
            good.replace("[admin]", &format!("[admin]\ntoken_file = \"{file}\"")),
        )
        .unwrap();
        // A FIFO used to block the reload (and every later one) forever; /dev/zero to grow
        // the process without bound. The watcher's reload reports it...
        let expected = format!("admin.token_file \"{file}\" is not a regular file");
        wait_until(SECS5, &expected, || async {
            running
                .control()
                .status()
                .last_error
                .is_some_and(|f| f.errors.iter().any(|e| e.message == expected))
        })
        .await;
        // ... and so does one asked for through the API, in bounded time.
        let errors = tokio::time::timeout(SECS5, running.control().reload("api"))
            .await
            .expect("the reload finishes")
            .unwrap_err();
        assert!(errors.iter().any(|e| e.message == expected), "{errors:?}");
        assert_eq!(generation(&running), 1, "case {i}");
        assert_eq!(get(&client(), proxy, 1).await.status, 200);
    }
    // The pipeline is not wedged: the next good file applies.
    std::fs::write(
        &path,
        good.replace("[pools.push]", "[pools.push]\nretries = 1"),
    )
    .unwrap();
    wait_generation(&running, 2).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_too_large_for_the_clock_is_refused_and_requests_keep_flowing() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    let good = config_text(&[("w1", ws[0].addr(), 1)], "");
    std::fs::write(&path, &good).unwrap();
    let running = start_file(&path).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    for key in ["request_timeout", "header_read_timeout", "idle_timeout"] {
        let text = if good.contains(&format!("{key} =")) {
            good.replace(
                "request_timeout = \"2s\"",
                "request_timeout = \"300000000000y\"",
            )
        } else {
            good.replace("[admin]", &format!("{key} = \"300000000000y\"\n\n[admin]"))
        };
        std::fs::write(&path, text).unwrap();
        let expected = format!("server.{key} must be at most 24h");
        wait_until(SECS5, &expected, || async {
            running
                .control()
                .status()
                .last_error
                .is_some_and(|f| f.errors.iter().any(|e| e.message.contains(&expected)))
        })
        .await;
        // Accepted, the request timeout panicked in every request (and the header timeout
        // inside hyper for every new HTTP/1.1 connection).
        for _ in 0..20 {
            assert_eq!(get(&client(), proxy, 1).await.status, 200, "{key}");
        }
    }
    assert_eq!(generation(&running), 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_need_a_restart_the_rest_applies() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    let text = config_text(&[("w1", ws[0].addr(), 1)], "");
    std::fs::write(&path, &text).unwrap();
    let running = start_file(&path).await;
    let before = running.shared().snapshot().config.server.listen.clone();
    std::fs::write(
        &path,
        text.replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]")
            .replace("request_timeout = \"2s\"", "request_timeout = \"3s\""),
    )
    .unwrap();
    wait_generation(&running, 2).await;
    let cfg = running.shared().snapshot().config.clone();
    assert_eq!(cfg.server.listen, before);
    assert_eq!(cfg.server.request_timeout, Duration::from_secs(3));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_read_timeout_applies_to_connections_after_a_reload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    let text = config_text(&[("w1", ws[0].addr(), 1)], "")
        .replace("[admin]", "header_read_timeout = \"30s\"\n\n[admin]");
    std::fs::write(&path, &text).unwrap();
    let running = start_file(&path).await;
    let proxy = running.proxy_addrs()[0];
    std::fs::write(&path, text.replace("\"30s\"", "\"300ms\"")).unwrap();
    running.control().reload("api").await.unwrap();
    // Half a request line, then nothing: cut off after the new 300 ms, not the old 30 s.
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /v1/batch HT").await.unwrap();
    let mut b = [0u8; 256];
    let r = tokio::time::timeout(SECS5, s.read(&mut b))
        .await
        .expect("closed by the reloaded header_read_timeout");
    assert!(matches!(r, Ok(0) | Err(_)) || String::from_utf8_lossy(&b).contains("408"));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_nothing_and_never_admit_an_unsynced_worker() {
    let ws = workers(4).await;
    let syncing = SimWorker::start(SimOptions {
        synced: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    let a = |i: usize| ws[i].addr();
    std::fs::write(
        &path,
        config_text(&[("w1", a(0), 1), ("w2", a(1), 1), ("w3", a(2), 1)], ""),
    )
    .unwrap();
    let running = start_file(&path).await;
    let proxy = running.proxy_addrs()[0];
    for n in ["w1", "w2", "w3"] {
        wait_state(&running, n, State::Ready).await;
    }

    const CLIENTS: u64 = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, bad, total) = (stop.clone(), bad.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let status = match send(
                    &c,
                    proxy,
                    "GET",
                    "/v1/batch",
                    Some(fastrand::u64(0..1000)),
                    Default::default(),
                )
                .await
                {
                    Ok(a) => a.status.as_u16(),
                    Err(_) => 0,
                };
                total.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    bad.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed request: status {status}");
                }
            }
        }));
    }
    let reload = |text: String, g: u64| {
        let path = path.clone();
        let running = &running;
        async move {
            rename_over(&path, &text);
            wait_generation(running, g).await;
        }
    };
    // 1: weights change.
    reload(
        config_text(&[("w1", a(0), 3), ("w2", a(1), 1), ("w3", a(2), 1)], ""),
        2,
    )
    .await;
    // 2: add w4 (synced) and the syncing worker.
    reload(
        config_text(
            &[
                ("w1", a(0), 3),
                ("w2", a(1), 1),
                ("w3", a(2), 1),
                ("w4", a(3), 1),
                ("syncing", syncing.addr(), 1),
            ],
            "",
        ),
        3,
    )
    .await;
    wait_state(&running, "w4", State::Ready).await;
    // 3: remove w1 and w2.
    reload(
        config_text(
            &[
                ("w3", a(2), 1),
                ("w4", a(3), 1),
                ("syncing", syncing.addr(), 1),
            ],
            "balance = \"round_robin\"",
        ),
        4,
    )
    .await;
    let (w1_at_removal, w2_at_removal) = (ws[0].requests(), ws[1].requests());
    wait_until(SECS5, "load continues", || async {
        ws[2].requests() + ws[3].requests() > 300
    })
    .await;
    assert!(
        ws[0].requests() - w1_at_removal <= CLIENTS,
        "removed w1 got new requests"
    );
    assert!(
        ws[1].requests() - w2_at_removal <= CLIENTS,
        "removed w2 got new requests"
    );
    assert_eq!(syncing.requests(), 0, "a syncing worker got traffic");
    // 4: the syncing worker completes its sync and is admitted.
    syncing.set_synced();
    wait_state(&running, "syncing", State::Ready).await;
    wait_until(SECS5, "synced worker serves", || async {
        syncing.requests() > 10
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(total.load(Ordering::Relaxed) > 500);
    // Removed backends are forgotten once drained.
    wait_until(SECS5, "removed backends forgotten", || async {
        running.shared().all_backends().len() == 3
    })
    .await;
    running.shutdown().await;
}
