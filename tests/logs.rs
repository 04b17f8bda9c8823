//! syncgate's own log as an operator reads it: flat JSON lines (fields at the top level, the
//! request id a plain string), ejections at WARN, one line and one event when a pool loses its
//! last ready backend and one when it has one again, a line and an event for a backend a
//! reload adds, and the outcome of a reload that changes nothing.
//!
//! One test: the subscriber is process-wide, so the lines of one syncgate are read in order
//! from what it captured. Waiting is a deadline-bounded poll, never a bare sleep.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use support::{client, pool_config, wait_state, wait_until, workers};
use syncgate::logging::{self, LogFormat};
use syncgate::{Config, State};

const WAIT: Duration = Duration::from_secs(5);

/// Every byte the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every line so far, each parsed as JSON.
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes)
            .expect("UTF-8 log")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
            .collect()
    }

    /// The lines whose message is `message`.
    fn with_message(&self, message: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["message"] == message)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_flat_json_lines_that_tell_each_state_change_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = logging::subscriber(
        LogFormat::Json,
        logging::filter(Some("info"), "info"),
        move || writer.clone(),
        false,
    );
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let ws = workers(3).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("syncgate.toml");
    let text = |n: usize| {
        let backends: Vec<(String, std::net::SocketAddr)> = ws[..n]
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("w{}", i + 1), w.addr()))
            .collect();
        let refs: Vec<(&str, std::net::SocketAddr)> =
            backends.iter().map(|(n, a)| (n.as_str(), *a)).collect();
        pool_config(&refs, "", "")
            .replace("request_timeout = \"2s\"", "request_timeout = \"300ms\"")
    };
    std::fs::write(&path, text(2)).expect("write config");
    let running = syncgate::start(Config::load(&path).expect("valid config"))
        .await
        .expect("syncgate starts");
    wait_state(&running, "w1", State::Ready).await;
    wait_state(&running, "w2", State::Ready).await;

    // Every line is one flat JSON object: no "fields" object, the message at the top.
    let started = captured.with_message("proxy listening");
    assert_eq!(started.len(), 1, "{:?}", captured.lines());
    assert!(started[0]["listen"].is_string());
    assert!(captured.lines().iter().all(|v| v.get("fields").is_none()));

    // A backend added by a reload: a line and an event.
    std::fs::write(&path, text(3)).expect("write config");
    assert_eq!(running.control().reload("api").await, Ok(2));
    let added = captured.with_message("backend added to config");
    assert_eq!(added.len(), 1, "{:?}", captured.lines());
    assert_eq!(added[0]["backend"], "w3");
    assert_eq!(added[0]["pool"], "push");
    let events = running.shared().events.since(0);
    assert!(events
        .iter()
        .any(|e| e.backend == "w3" && e.from == "absent" && e.to == "pending"));

    // A reload of an unchanged file says so.
    assert_eq!(running.control().reload("signal").await, Ok(2));
    // The file watcher may also have seen the write above and logged its own "unchanged"
    // (trigger "file"), before or after the API's reload: only the signal's line is counted.
    let unchanged: Vec<_> = captured
        .with_message("config unchanged")
        .into_iter()
        .filter(|v| v["trigger"] == "signal")
        .collect();
    assert_eq!(unchanged.len(), 1, "{:?}", captured.lines());
    assert_eq!(unchanged[0]["generation"], 2);
    wait_state(&running, "w3", State::Ready).await;

    // The request id is a plain string at the top level.
    for w in &ws {
        w.set_delay(Duration::from_secs(1));
    }
    let req = http::Request::post(format!("http://{}/v1/batch", running.proxy_addrs()[0]))
        .header("authorization", "Bearer key-1")
        .header("x-request-id", "req-42")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let answer = client().request(req).await.expect("an answer");
    assert_eq!(answer.status(), http::StatusCode::GATEWAY_TIMEOUT);
    let timeout = captured.with_message("upstream timeout");
    assert_eq!(timeout.len(), 1);
    assert_eq!(timeout[0]["request_id"], "req-42");
    assert_eq!(timeout[0]["level"], "WARN");
    for w in &ws {
        w.set_delay(Duration::ZERO);
    }

    // Every backend's probe fails: each ejection is a WARN, and the pool's outage is told once.
    for w in &ws {
        w.set_probe_override(Some((503, "{}".into())));
    }
    for name in ["w1", "w2", "w3"] {
        wait_state(&running, name, State::Ejected).await;
    }
    let lost = "pool has no ready backend; answering 503";
    wait_until(WAIT, "the pool's outage is logged", || async {
        !captured.with_message(lost).is_empty()
    })
    .await;
    let ejections: Vec<Value> = captured
        .with_message("backend state changed")
        .into_iter()
        .filter(|v| v["to"] == "ejected")
        .collect();
    assert_eq!(ejections.len(), 3);
    assert!(
        ejections.iter().all(|v| v["level"] == "WARN"),
        "{ejections:?}"
    );
    assert!(ejections.iter().all(|v| v["reason"] == "status 503"));

    for w in &ws {
        w.set_probe_override(None);
    }
    for name in ["w1", "w2", "w3"] {
        wait_state(&running, name, State::Ready).await;
    }
    let back = "pool has a ready backend again";
    wait_until(WAIT, "the pool's recovery is logged", || async {
        !captured.with_message(back).is_empty()
    })
    .await;
    let lost_lines = captured.with_message(lost);
    assert_eq!(lost_lines.len(), 1, "told once");
    assert_eq!(lost_lines[0]["level"], "WARN");
    assert_eq!(lost_lines[0]["pool"], "push");
    let back_lines = captured.with_message(back);
    assert_eq!(back_lines.len(), 1, "told once");
    assert_eq!(back_lines[0]["level"], "INFO");
    let pool_events: Vec<(&str, &str)> = running
        .shared()
        .events
        .since(0)
        .iter()
        .filter(|e| e.backend.is_empty())
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(
        pool_events,
        vec![("serving", "unavailable"), ("unavailable", "serving")]
    );

    running.shutdown().await;
    for w in ws {
        w.stop().await;
    }
}
