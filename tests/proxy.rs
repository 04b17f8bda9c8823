//! End-to-end tests of the request path and the readiness gate: syncgate in-process on
//! 127.0.0.1:0 in front of simulated workers that are real HTTP servers.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const SECS5: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncing_worker_gets_nothing_until_in_sync() {
    let ready = workers(1).await;
    let syncing = SimWorker::start(SimOptions {
        synced: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = pool_config(
        &[("ready", ready[0].addr()), ("syncing", syncing.addr())],
        "",
        "",
    );
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "ready", State::Ready).await;
    let c = client();
    for k in 0..50 {
        assert_eq!(get(&c, proxy, k).await.status, 200);
    }
    assert_eq!(syncing.requests(), 0, "a syncing worker received traffic");
    assert_eq!(state_of(&running, "syncing"), Some(State::Pending));
    let reason = running
        .shared()
        .snapshot()
        .backends()
        .find(|b| &*b.name == "syncing")
        .unwrap()
        .info()
        .reason
        .clone();
    assert_eq!(reason, "status 503");

    syncing.set_synced();
    wait_state(&running, "syncing", State::Ready).await;
    wait_until(SECS5, "the synced worker gets traffic", || async {
        get(&c, proxy, 1).await;
        syncing.requests() > 0
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_but_inconsistent_workers_are_not_admitted() {
    let ws = workers(3).await;
    let cfg = pool_config(
        &[
            ("a", ws[0].addr()),
            ("few", ws[1].addr()),
            ("stale", ws[2].addr()),
        ],
        "",
        "",
    );
    // Peers report generation 100 and 1000 keys (SimOptions::default()).
    ws[1].set_probe_override(Some((
        200,
        r#"{"key_sync":{"complete":true,"generation":100,"keys":12}}"#.into(),
    )));
    ws[2].set_probe_override(Some((
        200,
        r#"{"key_sync":{"complete":true,"generation":40,"keys":1000}}"#.into(),
    )));
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "a", State::Ready).await;
    let c = client();
    // Give the others many probe rounds to (wrongly) pass.
    for k in 0..100 {
        assert_eq!(get(&c, proxy, k).await.status, 200);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(ws[1].requests(), 0);
    assert_eq!(ws[2].requests(), 0);
    let snap = running.shared().snapshot();
    let reason = |n: &str| {
        snap.backends()
            .find(|b| &*b.name == n)
            .unwrap()
            .info()
            .reason
            .clone()
    };
    assert_eq!(reason("few"), "too few keys 12 < 0.98 × 1000");
    assert_eq!(reason("stale"), "stale generation 40 < 100 - 10");
    assert_eq!(state_of(&running, "few"), Some(State::Pending));

    // Once they really are in sync, they are admitted.
    ws[1].set_probe_override(None);
    ws[2].set_probe_override(None);
    wait_state(&running, "few", State::Ready).await;
    wait_state(&running, "stale", State::Ready).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_worker_reporting_incomplete_sync_is_ejected_at_once() {
    let ws = workers(2).await;
    let names = named(&ws);
    // `fall = 5` would take a second of failed probes; the worker's own word takes one.
    let cfg = pool_config(
        &refs(&names),
        "",
        "interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 5",
    );
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    wait_state(&running, "w2", State::Ready).await;
    let probes_before = ws[1].probes();
    ws[1].set_probe_override(Some((
        200,
        r#"{"key_sync":{"complete":false,"generation":100,"keys":10}}"#.into(),
    )));
    wait_state(&running, "w2", State::Ejected).await;
    let probes = ws[1].probes() - probes_before;
    assert!(probes < 5, "ejected only after {probes} probes");
    // The transition's reason, from the event log (the backend's current reason moves on
    // with each probe).
    let events = running.shared().events.since(0);
    let ejection = events.iter().rev().find(|e| e.backend == "w2").unwrap();
    assert_eq!((ejection.from, ejection.to), ("ready", "ejected"));
    assert_eq!(ejection.reason, "sync incomplete (10 keys)");
    // Once it is in sync again, `rise` passing probes bring it back.
    ws[1].set_probe_override(None);
    wait_state(&running, "w2", State::Ready).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_401_under_load_while_a_worker_joins_empty() {
    let ws = workers(2).await;
    let late = SimWorker::start(SimOptions {
        synced: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = pool_config(
        &[
            ("w1", ws[0].addr()),
            ("w2", ws[1].addr()),
            ("late", late.addr()),
        ],
        "",
        "",
    );
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    wait_state(&running, "w2", State::Ready).await;

    let stop = Arc::new(AtomicBool::new(false));
    let unauthorized = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, unauthorized, ok) = (stop.clone(), unauthorized.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let a = get(&c, proxy, fastrand::u64(0..1000)).await;
                match a.status.as_u16() {
                    401 => unauthorized.fetch_add(1, Ordering::Relaxed),
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    s => panic!("unexpected status {s}"),
                };
            }
        }));
    }
    // The late worker syncs over 600 ms while the load runs.
    late.begin_sync(Duration::from_millis(600));
    wait_state(&running, "late", State::Ready).await;
    wait_until(SECS5, "late worker serves", || async {
        late.requests() > 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        unauthorized.load(Ordering::Relaxed),
        0,
        "a 401 reached a client"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    let late_401: u64 = late
        .status_counts()
        .iter()
        .filter(|(s, _)| *s == 401)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        late_401, 0,
        "the late worker was sent requests before it was in sync"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_worker_means_503_with_retry_after_never_401() {
    let w = SimWorker::start(SimOptions {
        synced: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = pool_config(&[("w1", w.addr())], "", "");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    for k in 0..20 {
        let a = get(&c, proxy, k).await;
        assert_eq!(a.status, 503);
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
        assert_eq!(a.json()["pool"], "push");
    }
    assert_eq!(w.requests(), 0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_retry_elsewhere_then_502() {
    let mut ws = workers(2).await;
    let cfg = pool_config(
        &[("w1", ws[0].addr()), ("w2", ws[1].addr())],
        "retries = 1\nbalance = \"round_robin\"",
        "interval = \"60s\"\ntimeout = \"1s\"\nrise = 1",
    );
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    wait_state(&running, "w2", State::Ready).await;
    // w2 dies; its probe will not notice for a minute.
    let dead = ws.pop().unwrap();
    dead.stop().await;
    let c = client();
    for k in 0..4 {
        assert_eq!(get(&c, proxy, k).await.status, 200, "retried on w1");
    }
    // Both dead: one try and one retry, then 502.
    ws.pop().unwrap().stop().await;
    let a = get(&c, proxy, 1).await;
    assert_eq!(a.status, 502);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "")
        .replace("request_timeout = \"2s\"", "request_timeout = \"300ms\"");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    ws[0].set_delay(Duration::from_secs(2));
    let a = get(&client(), proxy, 1).await;
    assert_eq!(a.status, 504);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "")
        .replace("[admin]", "max_request_body = \"1KiB\"\n\n[admin]");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    let c = client();
    let small = send(
        &c,
        proxy,
        "POST",
        "/v1/batch",
        Some(1),
        Bytes::from(vec![b'x'; 1000]),
    )
    .await
    .unwrap();
    assert_eq!(small.status, 200);
    assert_eq!(small.json()["bytes"], 1000);
    let big = send(
        &c,
        proxy,
        "POST",
        "/v1/batch",
        Some(1),
        Bytes::from(vec![b'x'; 2000]),
    )
    .await
    .unwrap();
    assert_eq!(big.status, 413);
    // Chunked: the size is only known while streaming.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let chunk = "x".repeat(800);
    let req = format!(
        "POST /v1/batch HTTP/1.1\r\nhost: t\r\nauthorization: Bearer key-1\r\ntransfer-encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    running.shutdown().await;
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(SECS5, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "")
        .replace("[admin]", "header_read_timeout = \"300ms\"\n\n[admin]");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    // Sends half a request line, then nothing.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    // Taken before the write: the server's timer may start before this task runs again.
    let started = std::time::Instant::now();
    s.write_all(b"GET /v1/batch HT").await.unwrap();
    let mut b = [0u8; 256];
    let r = tokio::time::timeout(SECS5, s.read(&mut b))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)) || String::from_utf8_lossy(&b).contains("408"));
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A client that connects and says nothing is closed too.
    let mut idle = TcpStream::connect(proxy).await.unwrap();
    let r = tokio::time::timeout(SECS5, idle.read(&mut b))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_408_not_504() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "")
        .replace("request_timeout = \"2s\"", "request_timeout = \"400ms\"");
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    let mut s = TcpStream::connect(running.proxy_addrs()[0]).await.unwrap();
    s.write_all(
        b"POST /v1/batch HTTP/1.1\r\nHost: push\r\nAuthorization: Bearer key-1\r\n\
          Content-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(ws[0].requests(), 0, "a half-received body was forwarded");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_busy_ones_are_not() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "")
        .replace("[admin]", "idle_timeout = \"400ms\"\n\n[admin]");
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    let proxy = running.proxy_addrs()[0];
    let request = || {
        http::Request::post(format!("http://{proxy}/v1/batch"))
            .header("authorization", "Bearer key-1")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let closed = tokio::spawn(conn);
    // A request slower than the idle timeout is in progress, not idle: it completes.
    ws[0].set_delay(Duration::from_millis(900));
    let resp = send.send_request(request()).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    ws[0].set_delay(Duration::ZERO);
    // Had the server counted that time as idle, it would have sent GOAWAY, and this second
    // request on the same connection would be refused. The idle time is measured from before
    // it (the server's idle timer starts before this task has read the answer).
    let started = std::time::Instant::now();
    let resp = send.send_request(request()).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // Then nothing: the server says goodbye, and the client's connection ends.
    tokio::time::timeout(SECS5, closed)
        .await
        .expect("idle HTTP/2 connection closed by the server")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_rejected_and_never_forwarded() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    for req in [
        "POST /v1/batch HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        "POST /v1/batch HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        "POST /v1/batch HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(head.is_empty() || head.starts_with("HTTP/1.1 400"), "{req:?} → {head}");
    }
    assert_eq!(ws[0].requests(), 0, "a malformed request was forwarded");
    // Content-Length with chunked: the length is dropped, the body read as chunked, and the
    // connection closed after the answer.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /v1/batch HTTP/1.1\r\nhost: t\r\nauthorization: Bearer key-1\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(SECS5, s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"bytes\":3"), "{text}");
    running.shutdown().await;
}

/// A request head of up to 64 KiB is served over HTTP/1.1 and HTTP/2 alike; a larger one is
/// answered `431` (HTTP/2's limit was hyper's default of 16 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_up_to_64_kib_pass_over_both_protocols_and_larger_ones_get_431() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    for (name, c) in [("HTTP/1.1", client()), ("HTTP/2", h2_client())] {
        for (size, status) in [(40 * 1024, 200), (80 * 1024, 431)] {
            let req = http::Request::get(format!("http://{proxy}/v1/batch"))
                .header("authorization", "Bearer key-1")
                .header("x-big", "a".repeat(size))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            let resp = c.request(req).await.expect("answered");
            assert_eq!(resp.status(), status, "{name}, a header of {size} bytes");
        }
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_and_header_hygiene() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    let a = get(&h2_client(), proxy, 1).await;
    assert_eq!(a.status, 200);

    let c = client();
    let req = http::Request::get(format!("http://{proxy}/echo?x=1"))
        .header("host", "push.example.com")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-custom", "kept")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let h = &echo["headers"];
    assert_eq!(echo["path"], "/echo?x=1");
    assert!(h.get("x-hop").is_none(), "{h}");
    assert!(h.get("keep-alive").is_none(), "{h}");
    assert!(h.get("connection").is_none(), "{h}");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "push.example.com");
    assert_eq!(h["host"], "push.example.com");
    assert_eq!(
        h["x-request-id"],
        rid.as_str(),
        "the generated id travels upstream"
    );

    // A client's own request id is kept.
    let req = http::Request::get(format!("http://{proxy}/echo"))
        .header("x-request-id", "abc-123")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_prefix() {
    let a = workers(1).await;
    let b = workers(1).await;
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
worker_threads = 1
[admin]
listen = "127.0.0.1:0"
[pools.a.probe]
interval = "50ms"
timeout = "40ms"
rise = 1
[[pools.a.backends]]
name = "a1"
addr = "{}"
[pools.b.probe]
interval = "50ms"
timeout = "40ms"
rise = 1
[[pools.b.backends]]
name = "b1"
addr = "{}"
[[routes]]
host = "*.example.com"
path_prefix = "/"
pool = "a"
[[routes]]
host = "push.example.com"
path_prefix = "/v2/"
pool = "b"
"#,
        a[0].addr(),
        b[0].addr()
    );
    let running = start(&toml).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "a1", State::Ready).await;
    wait_state(&running, "b1", State::Ready).await;
    let c = client();
    let go = |host: &'static str, path: &'static str| {
        let c = c.clone();
        async move {
            let req = http::Request::get(format!("http://{proxy}{path}"))
                .header("host", host)
                .header("authorization", "Bearer key-1")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            let r = c.request(req).await.unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("x-worker")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        }
    };
    let (s, w) = go("push.example.com", "/v2/batch").await;
    assert_eq!((s, w), (200, Some(b[0].addr().to_string())));
    let (s, w) = go("PUSH.example.com:8080", "/v1/batch").await;
    assert_eq!((s, w), (200, Some(a[0].addr().to_string())));
    let (s, _) = go("other.org", "/v1/batch").await;
    assert_eq!(s, 404);
    let (s, _) = go("example.com", "/v1/batch").await;
    assert_eq!(s, 404, "*.example.com does not match the bare domain");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let ws = workers(1).await;
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    ws[0].set_delay(Duration::from_millis(1500));
    let slow = tokio::spawn(async move {
        let a = get(&client(), proxy, 1).await;
        (a.status, a.headers.get("connection").cloned())
    });
    wait_until(SECS5, "request in flight", || async {
        ws[0].requests() == 1
    })
    .await;
    let shutdown = tokio::spawn(running.shutdown());
    let (status, connection) = slow.await.unwrap();
    assert_eq!(status, 200, "in-flight request finished");
    // The last answer of its HTTP/1.1 connection says so.
    assert_eq!(
        connection.as_ref().and_then(|v| v.to_str().ok()),
        Some("close")
    );
    tokio::time::timeout(SECS5, shutdown)
        .await
        .unwrap()
        .unwrap();
    // The listener is closed.
    assert!(TcpStream::connect(proxy).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_route_host_matches_http1_and_http2_requests_alike() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let ws = workers(1).await;
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
worker_threads = 1
[admin]
listen = "127.0.0.1:0"
[pools.v6.probe]
interval = "50ms"
timeout = "40ms"
rise = 1
[[pools.v6.backends]]
name = "w1"
addr = "{}"
[[routes]]
host = "[::1]:8080"
pool = "v6"
"#,
        ws[0].addr()
    );
    let running = start(&toml).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    // HTTP/1.1 names the host in the `Host` header.
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut http1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // HTTP/2 names it in the `:authority` pseudo-header.
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut http2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (host, expected) in [("[::1]:8080", 200), ("[::1]", 200), ("[::2]:8080", 404)] {
        let req = http::Request::get("/v1/batch")
            .header("host", host)
            .header("authorization", "Bearer key-1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = http1.send_request(req).await.unwrap();
        assert_eq!(resp.status(), expected, "HTTP/1.1 Host: {host}");
        resp.into_body().collect().await.unwrap();
        let req = http::Request::get(format!("http://{host}/v1/batch"))
            .header("authorization", "Bearer key-1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = http2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), expected, "HTTP/2 :authority {host}");
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(ws[0].requests(), 4);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_with_405_and_reaches_no_worker() {
    let ws = workers(1).await;
    let named = named(&ws);
    let running = start(&pool_config(&refs(&named), "", "")).await;
    wait_state(&running, "w1", State::Ready).await;
    let mut s = TcpStream::connect(running.proxy_addrs()[0]).await.unwrap();
    s.write_all(b"CONNECT worker.example:443 HTTP/1.1\r\nHost: worker.example:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(ws[0].requests(), 0);
    running.shutdown().await;
}
