//! Unit tests of the simulated worker over real sockets.

use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

struct Answer {
    status: u16,
    worker: Option<String>,
    json: serde_json::Value,
}

async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Answer {
    let response = client.request(req).await.expect("request failed");
    let status = response.status().as_u16();
    let worker = response
        .headers()
        .get("x-worker")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body failed")
        .to_bytes();
    let json = serde_json::from_slice(&body).expect("body is not JSON");
    Answer {
        status,
        worker,
        json,
    }
}

async fn get(client: &TestClient, addr: SocketAddr, path: &str) -> Answer {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(client, req).await
}

async fn push(client: &TestClient, addr: SocketAddr, key: &str, body: &str) -> Answer {
    let req = Request::post(format!("http://{addr}/v1/batch"))
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    send(client, req).await
}

fn unsynced(total_keys: u64) -> SimOptions {
    SimOptions {
        total_keys,
        generation: 7,
        synced: false,
    }
}

#[tokio::test]
async fn synced_worker_probe_and_keys() {
    let worker = SimWorker::start(SimOptions::default())
        .await
        .expect("start");
    let addr = worker.addr();
    let c = client();

    let probe = get(&c, addr, "/ready").await;
    assert_eq!(probe.status, 200);
    assert_eq!(
        probe.json,
        serde_json::json!({"key_sync": {"complete": true, "generation": 100, "keys": 1000}})
    );

    let ok = push(&c, addr, "key-999", "hello").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.worker.as_deref(), Some(addr.to_string().as_str()));
    assert_eq!(
        ok.json,
        serde_json::json!({"ok": true, "worker": addr.to_string(), "bytes": 5})
    );

    let unknown = push(&c, addr, "key-1000", "").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.json,
        serde_json::json!({"error": "unknown account key"})
    );

    // x-api-key works too; missing or garbled keys are 401.
    let req = Request::post(format!("http://{addr}/v1/batch"))
        .header("x-api-key", "key-3")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send(&c, req).await.status, 200);
    assert_eq!(get(&c, addr, "/v1/batch").await.status, 401);
    assert_eq!(push(&c, addr, "key-x1", "").await.status, 401);
    assert_eq!(push(&c, addr, "key-", "").await.status, 401);
    assert_eq!(push(&c, addr, "key-+1", "").await.status, 401);

    assert_eq!(worker.probes(), 1);
    assert_eq!(worker.requests(), 7);
    assert_eq!(worker.status_counts(), vec![(200, 2), (401, 5)]);
    assert_eq!(worker.held_keys(), 1000);
    worker.stop().await;
}

#[tokio::test]
async fn unsynced_worker_syncs_over_time() {
    let worker = SimWorker::start(unsynced(100)).await.expect("start");
    let addr = worker.addr();
    let c = client();

    assert_eq!(worker.held_keys(), 0);
    let probe = get(&c, addr, "/ready").await;
    assert_eq!(probe.status, 503);
    assert_eq!(
        probe.json,
        serde_json::json!({"key_sync": {"complete": false, "generation": 0, "keys": 0}})
    );
    assert_eq!(push(&c, addr, "key-0", "").await.status, 401);

    worker.begin_sync(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_partial = false;
    loop {
        let probe = get(&c, addr, "/ready").await;
        let keys = probe.json["key_sync"]["keys"].as_u64().expect("keys");
        if probe.status == 200 {
            assert_eq!(
                probe.json,
                serde_json::json!({"key_sync": {"complete": true, "generation": 7, "keys": 100}})
            );
            break;
        }
        assert_eq!(probe.status, 503);
        assert_eq!(probe.json["key_sync"]["complete"], false);
        assert_eq!(probe.json["key_sync"]["generation"], 0);
        assert!(keys < 100);
        if keys > 0 {
            saw_partial = true;
            // A held key answers, a key not yet held does not. The sync goes
            // on while we ask: key-99 is the last key synced, so it may pass
            // only once the worker holds every key.
            assert_eq!(push(&c, addr, "key-0", "").await.status, 200);
            let last = push(&c, addr, "key-99", "").await.status;
            assert!(
                last == 401 || worker.held_keys() == 100,
                "key-99 answered {last} with {} keys held",
                worker.held_keys()
            );
        }
        assert!(Instant::now() < deadline, "sync never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_partial, "keys never appeared gradually");
    assert_eq!(worker.held_keys(), 100);
    assert_eq!(push(&c, addr, "key-99", "").await.status, 200);
    worker.stop().await;
}

#[tokio::test]
async fn set_synced_and_forget_keys() {
    let worker = SimWorker::start(unsynced(10)).await.expect("start");
    let addr = worker.addr();
    let c = client();

    worker.set_synced();
    assert_eq!(worker.held_keys(), 10);
    assert_eq!(get(&c, addr, "/ready").await.status, 200);
    assert_eq!(push(&c, addr, "key-9", "").await.status, 200);

    worker.forget_keys();
    assert_eq!(worker.held_keys(), 0);
    let probe = get(&c, addr, "/ready").await;
    assert_eq!(probe.status, 200, "the probe keeps lying");
    assert_eq!(
        probe.json,
        serde_json::json!({"key_sync": {"complete": true, "generation": 7, "keys": 10}})
    );
    assert_eq!(push(&c, addr, "key-0", "").await.status, 401);

    // A new sync ends the lie.
    worker.begin_sync(Duration::from_secs(3600));
    assert_eq!(get(&c, addr, "/ready").await.status, 503);
    worker.set_synced();
    assert_eq!(push(&c, addr, "key-0", "").await.status, 200);
    worker.stop().await;
}

#[tokio::test]
async fn overrides_and_delay() {
    let worker = SimWorker::start(SimOptions::default())
        .await
        .expect("start");
    let addr = worker.addr();
    let c = client();

    worker.set_probe_override(Some((500, "{not json".to_owned())));
    let response = c
        .request(
            Request::get(format!("http://{addr}/ready"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 500);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"{not json");
    worker.set_probe_override(None);
    assert_eq!(get(&c, addr, "/ready").await.status, 200);

    worker.set_status_override(Some(503));
    let answer = push(&c, addr, "key-1", "abc").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.worker.as_deref(), Some(addr.to_string().as_str()));
    assert_eq!(
        get(&c, addr, "/ready").await.status,
        200,
        "probes unaffected"
    );
    worker.set_status_override(None);
    assert_eq!(push(&c, addr, "key-1", "abc").await.status, 200);

    worker.set_delay(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(push(&c, addr, "key-1", "").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    worker.set_delay(Duration::ZERO);

    assert_eq!(worker.probes(), 3);
    assert_eq!(worker.requests(), 3);
    assert_eq!(worker.status_counts(), vec![(200, 2), (503, 1)]);
    worker.stop().await;
}

#[tokio::test]
async fn echo_reports_the_request() {
    let worker = SimWorker::start(unsynced(10)).await.expect("start");
    let addr = worker.addr();
    let c = client();
    let req = Request::put(format!("http://{addr}/echo?a=1&b=2"))
        .header("x-one", "1")
        .header("x-many", "a")
        .header("x-many", "b")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .expect("request");
    let answer = send(&c, req).await;
    assert_eq!(answer.status, 200, "no key check on /echo");
    let json = answer.json;
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["path"], "/echo?a=1&b=2");
    assert_eq!(json["body_len"], 10);
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["headers"]["x-one"], "1");
    assert_eq!(json["headers"]["x-many"], serde_json::json!(["a", "b"]));
    assert_eq!(json["headers"]["host"], addr.to_string());
    assert_eq!(worker.requests(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let worker = SimWorker::start(SimOptions::default())
        .await
        .expect("start");
    let addr = worker.addr();
    let c = h2_client();
    let echo = get(&c, addr, "/echo").await;
    assert_eq!(echo.status, 200);
    assert_eq!(echo.json["version"], "HTTP/2.0");
    assert_eq!(get(&c, addr, "/ready").await.status, 200);
    assert_eq!(push(&c, addr, "key-5", "xyz").await.status, 200);
    assert_eq!(push(&c, addr, "key-5000", "xyz").await.status, 401);
    worker.stop().await;
}

#[tokio::test]
async fn stop_closes_listener_and_connections() {
    let worker = SimWorker::start(SimOptions::default())
        .await
        .expect("start");
    let addr = worker.addr();

    // An idle keep-alive connection, and a request stuck in a delay.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /ready HTTP/1.1\r\nhost: sim\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    worker.set_delay(Duration::from_secs(3600));
    let c = h2_client();
    let stuck = tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}/v1/batch"))
            .header("authorization", "Bearer key-1")
            .body(Full::new(Bytes::new()))
            .expect("request");
        c.request(req).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while worker.requests() == 0 {
        assert!(Instant::now() < deadline, "request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    tokio::time::timeout(Duration::from_secs(10), worker.stop())
        .await
        .expect("stop hung");

    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("idle connection not closed");
    assert!(matches!(closed, Ok(0) | Err(_)));
    let stuck = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("stuck request not ended")
        .expect("join");
    assert!(stuck.is_err(), "the stuck request must fail");

    // The port can be reused at once.
    let again = SimWorker::start_on(addr, SimOptions::default())
        .await
        .expect("restart on the same port");
    assert_eq!(again.addr(), addr);
    assert_eq!(get(&client(), addr, "/ready").await.status, 200);
    again.stop().await;
}

#[tokio::test]
async fn the_key_set_changes_with_its_generation() {
    let worker = SimWorker::start(unsynced(10)).await.expect("start");
    let addr = worker.addr();
    let c = client();
    worker.set_synced();

    // A cancellation: the key is gone and the generation advanced.
    worker.remove_key(3);
    assert_eq!(push(&c, addr, "key-3", "").await.status, 401);
    assert_eq!(push(&c, addr, "key-4", "").await.status, 200);
    assert_eq!(
        get(&c, addr, "/ready").await.json,
        serde_json::json!({"key_sync": {"complete": true, "generation": 8, "keys": 9}})
    );
    // A new account: held at once by a synced worker, with the next generation.
    worker.add_keys(1);
    assert_eq!(push(&c, addr, "key-10", "").await.status, 200);
    assert_eq!(worker.generation(), 9);
    assert_eq!(worker.held_keys(), 10);

    // A truncated database: the probe tells the count but still claims a complete sync.
    worker.truncate_keys(2);
    assert_eq!(push(&c, addr, "key-5", "").await.status, 401);
    let probe = get(&c, addr, "/ready").await;
    assert_eq!(probe.status, 200);
    assert_eq!(
        probe.json,
        serde_json::json!({"key_sync": {"complete": true, "generation": 9, "keys": 2}})
    );
    worker.set_synced();
    assert_eq!(push(&c, addr, "key-5", "").await.status, 200);
    worker.stop().await;
}

#[tokio::test]
async fn a_slow_probe_is_counted_while_it_is_answered() {
    let worker = SimWorker::start(SimOptions::default())
        .await
        .expect("start");
    let addr = worker.addr();
    worker.set_probe_delay(Duration::from_millis(100));
    let started = Instant::now();
    // Two clients, two connections: the probes are answered side by side.
    let (c1, c2) = (client(), client());
    let (a, b) = tokio::join!(get(&c1, addr, "/ready"), get(&c2, addr, "/ready"));
    assert_eq!((a.status, b.status), (200, 200));
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(worker.max_concurrent_probes(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn healthz_answers_200_whatever_the_keys_held() {
    let worker = SimWorker::start(unsynced(10)).await.expect("start");
    let c = client();
    let health = get(&c, worker.addr(), "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json["status"], "ok");
    assert_eq!(get(&c, worker.addr(), "/ready").await.status, 503);
    assert_eq!(push(&c, worker.addr(), "key-1", "{}").await.status, 401);
    assert_eq!(worker.probes(), 2, "health checks count as probes");
    assert_eq!(worker.requests(), 1);
    worker.stop().await;
}
