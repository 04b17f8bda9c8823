//! Browser test of the admin status page: headless Chromium loads `GET /` from a running
//! syncgate, runs the page's script (which fetches `/api/backends` and `/api/events`), and
//! the dumped DOM must show every backend's row with its current state.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; another binary can be named with the
//! `CHROMIUM` environment variable). Without it the test fails when `CI` is set and is skipped
//! with a note otherwise, so that `cargo test` works on a bare dev machine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use syncgate::demo::{SimOptions, SimWorker};
use syncgate::Config;
use syncgate::Running;
use syncgate::State;

/// The browser binary (`$CHROMIUM`, else `/usr/bin/chromium`); `Err` with the path looked at
/// when it is not installed.
fn chromium() -> Result<PathBuf, PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(path)
    }
}

fn config_text(backends: &[(&str, SocketAddr)]) -> String {
    let mut s = r#"[server]
listen = ["127.0.0.1:0"]
worker_threads = 1

[admin]
listen = "127.0.0.1:0"

[pools.push]
slow_start = "0s"

[pools.push.probe]
interval = "100ms"
timeout = "90ms"
rise = 1
fall = 1
"#
    .to_string();
    for (name, addr) in backends {
        s.push_str(&format!(
            "\n[[pools.push.backends]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    s
}

fn state_of(running: &Running, name: &str) -> Option<State> {
    running
        .shared()
        .snapshot()
        .backends()
        .find(|b| &*b.name == name)
        .map(|b| b.state())
}

fn probed(running: &Running, name: &str) -> bool {
    running
        .shared()
        .snapshot()
        .backends()
        .any(|b| &*b.name == name && b.info().last_probe_ok.is_some())
}

/// The opening tag of the element carrying `data-backend="{backend}"`, if the DOM has one.
fn row_tag<'a>(dom: &'a str, backend: &str) -> Option<&'a str> {
    let at = dom.find(&format!("data-backend=\"{backend}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_every_backend_with_its_state() {
    let browser = match chromium() {
        Ok(path) => path,
        Err(missing) if std::env::var_os("CI").is_some() => panic!(
            "Chromium is required in CI for the status page test, and {} does not exist: \
             install the Debian package `chromium` or set CHROMIUM to the browser binary",
            missing.display()
        ),
        Err(missing) => {
            eprintln!(
                "note: skipping the status page browser test: {} is not installed \
                 (apt-get install chromium, or set CHROMIUM)",
                missing.display()
            );
            return;
        }
    };

    let synced = || SimWorker::start(SimOptions::default());
    let (w1, w2) = (synced().await.expect("w1"), synced().await.expect("w2"));
    let w3 = SimWorker::start(SimOptions {
        synced: false,
        ..SimOptions::default()
    })
    .await
    .expect("w3");
    let text = config_text(&[("w1", w1.addr()), ("w2", w2.addr()), ("w3", w3.addr())]);
    let cfg = Config::parse(&text, None).expect("valid config");
    let running = syncgate::start(cfg).await.expect("syncgate starts");

    let deadline = Instant::now() + Duration::from_secs(5);
    while !(state_of(&running, "w1") == Some(State::Ready)
        && state_of(&running, "w2") == Some(State::Ready)
        && probed(&running, "w3"))
    {
        assert!(Instant::now() < deadline, "backends did not settle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state_of(&running, "w3"), Some(State::Pending));

    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{}/", running.admin_addr());
    let child = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", browser.display()));
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("chromium finished within 30 s")
        .expect("chromium output");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    for (backend, state) in [
        ("push/w1", "ready"),
        ("push/w2", "ready"),
        ("push/w3", "pending"),
    ] {
        let tag = row_tag(&dom, backend).unwrap_or_else(|| {
            panic!(
                "no row for {backend} in the rendered page; stderr: {}\nDOM:\n{dom}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        assert!(
            tag.contains(&format!("data-state=\"{state}\"")),
            "{backend} should be {state}: {tag}"
        );
    }
    // The events panel rendered the transitions to ready.
    assert!(dom.contains("data-seq=\""), "no event rows:\n{dom}");

    running.shutdown().await;
    for w in [w1, w2, w3] {
        w.stop().await;
    }
}
