//! Integration tests of the admin endpoint: every route of DESIGN.md's admin table and every
//! error answer, against a real syncgate in front of simulated workers, over real HTTP.
//!
//! Each test starts its own syncgate on `127.0.0.1:0`; waiting is always a deadline-bounded
//! poll of an observable condition, never a bare sleep.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::Config;
use syncgate::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "t0ken-for-tests-only";
const WAIT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A fully read answer.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(
    client: &HttpClient,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).expect("valid request"))
        .await
        .expect("HTTP exchange");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET` on the admin endpoint.
async fn get(c: &HttpClient, running: &Running, path: &str) -> Answer {
    send(
        c,
        "GET",
        format!("http://{}{path}", running.admin_addr()),
        &[],
        Bytes::new(),
    )
    .await
}

/// `POST` on the admin endpoint, with `Authorization: Bearer <token>` when given.
async fn post(c: &HttpClient, running: &Running, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    send(
        c,
        "POST",
        format!("http://{}{path}", running.admin_addr()),
        &headers,
        Bytes::new(),
    )
    .await
}

/// A push request through the proxy with account key `key-{key}`.
async fn push(c: &HttpClient, running: &Running, key: u64) -> Answer {
    let auth = format!("Bearer key-{key}");
    send(
        c,
        "POST",
        format!("http://{}/v1/batch", running.proxy_addrs()[0]),
        &[("authorization", &auth)],
        Bytes::from_static(b"{\"events\":[]}"),
    )
    .await
}

/// Polls `cond` every 20 ms; panics with `what` after [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Config text: one pool `push` over `backends`, fast probes, the access log off (no line per
/// request in the test output), and `admin_extra` lines in
/// `[admin]` (e.g. a token file).
fn config_text(backends: &[(&str, SocketAddr)], admin_extra: &str) -> String {
    let mut s = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
worker_threads = 1
request_timeout = "4s"
drain_timeout = "3s"

[server.access_log]
enabled = false

[admin]
listen = "127.0.0.1:0"
{admin_extra}

[pools.push]
slow_start = "0s"

[pools.push.probe]
interval = "100ms"
timeout = "1s"
rise = 1
fall = 1
"#
    );
    for (name, addr) in backends {
        s.push_str(&format!(
            "\n[[pools.push.backends]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    s
}

async fn start(text: &str) -> Running {
    let cfg = Config::parse(text, None).expect("valid test config");
    syncgate::start(cfg).await.expect("syncgate starts")
}

/// Writes `text` to `path` atomically (temp file + rename), as config tools do, so that the
/// file watcher never sees a half-written file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// A config file (and token file) in a fresh temp dir; syncgate started from the file.
async fn start_from_file(text: &str, dir: &tempfile::TempDir) -> (Running, PathBuf) {
    let path = dir.path().join("syncgate.toml");
    write_atomically(&path, text);
    let cfg = Config::load(&path).expect("valid test config file");
    (syncgate::start(cfg).await.expect("syncgate starts"), path)
}

/// A temp dir holding `admin.token`, and the `[admin]` line pointing at it.
fn token_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).expect("write token");
    let line = format!("token_file = {:?}", token_path.display().to_string());
    (dir, line)
}

async fn synced_worker() -> SimWorker {
    SimWorker::start(SimOptions::default())
        .await
        .expect("worker starts")
}

async fn unsynced_worker() -> SimWorker {
    SimWorker::start(SimOptions {
        synced: false,
        ..SimOptions::default()
    })
    .await
    .expect("worker starts")
}

/// Backend `name` of pool `push` as `GET /api/backends` shows it.
async fn backend(c: &HttpClient, running: &Running, name: &str) -> Value {
    let answer = get(c, running, "/api/backends").await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()["pools"]["push"]["backends"]
        .as_array()
        .expect("backends array")
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("backend {name} not listed"))
}

async fn wait_state(c: &HttpClient, running: &Running, name: &str, state: &str) {
    wait_until(&format!("{name} {state}"), || async {
        backend(c, running, name).await["state"] == state
    })
    .await;
}

fn assert_json_error(answer: &Answer, status: StatusCode) -> String {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert!(
        answer
            .header("content-type")
            .starts_with("application/json"),
        "content-type {:?}",
        answer.header("content-type")
    );
    let msg = answer.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", answer.text()))
        .to_string();
    assert!(!msg.is_empty());
    msg
}

// ---------------------------------------------------------------------------------------------
// A small parser of the Prometheus / OpenMetrics text format: `name{k="v",...} value`.

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches(',').trim().to_string();
        if key.is_empty() {
            return labels;
        }
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} value must be quoted in {s}"
        );
        let mut value = String::new();
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample line without a value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                parse_labels(rest.strip_suffix('}').expect("closing brace")),
            ),
            None => (series, BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The value of the one sample `name` with exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "exactly one sample {name}{labels:?}");
    found[0].value
}

async fn scrape(c: &HttpClient, running: &Running) -> (String, Vec<Sample>) {
    let answer = get(c, running, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    let text = answer.text();
    let samples = parse_metrics(&text);
    (text, samples)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_error_answers() {
    let w = synced_worker().await;
    let running = start(&config_text(&[("w1", w.addr())], "")).await;
    let c = client();

    let health = get(&c, &running, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");

    for path in [
        "/nope",
        "/api",
        "/api/backends/push",
        "/api/backends/push/w1/explode",
    ] {
        assert_json_error(&get(&c, &running, path).await, StatusCode::NOT_FOUND);
    }

    let head = send(
        &c,
        "HEAD",
        format!("http://{}/healthz", running.admin_addr()),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());

    let wrong = post(&c, &running, "/healthz", None).await;
    assert_json_error(&wrong, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "GET, HEAD");
    let wrong = get(&c, &running, "/api/reload").await;
    assert_json_error(&wrong, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "POST");
    let wrong = get(&c, &running, "/api/backends/push/w1/drain").await;
    assert_json_error(&wrong, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.header("allow"), "POST");

    running.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_unknown_pool_or_backend_is_404() {
    let w = synced_worker().await;
    let running = start(&config_text(&[("w1", w.addr())], "")).await;
    let c = client();

    let msg = assert_json_error(
        &post(&c, &running, "/api/backends/pull/w1/drain", None).await,
        StatusCode::NOT_FOUND,
    );
    assert!(msg.contains("pull"), "{msg}");
    let msg = assert_json_error(
        &post(&c, &running, "/api/backends/push/w9/enable", None).await,
        StatusCode::NOT_FOUND,
    );
    assert!(msg.contains("w9"), "{msg}");
    // Nothing changed.
    assert!(get(&c, &running, "/api/events").await.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .all(|e| e["to"] != "draining"));

    running.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_200_while_a_pool_has_no_ready_backend_and_shows_pool_health() {
    let w = unsynced_worker().await;
    let running = start(&config_text(&[("w1", w.addr())], "")).await;
    let c = client();

    // Pool health is shown but never changes the status: syncgate itself serves, and clients
    // get its designed 503 with Retry-After, counted as "no ready backend".
    let answer = get(&c, &running, "/readyz").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["status"], "serving");
    assert_eq!(body["generation"], 1);
    assert_eq!(body["pools"]["push"]["ready"], 0);
    assert_eq!(body["pools"]["push"]["backends"], 1);

    let (_, before) = scrape(&c, &running).await;
    let refused = push(&c, &running, 1).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!refused.header("retry-after").is_empty());
    let (_, after) = scrape(&c, &running).await;
    let no_ready = |s: &[Sample]| value(s, "syncgate_no_ready_backend_total", &[("pool", "push")]);
    assert_eq!(no_ready(&after) - no_ready(&before), 1.0);

    // Still 200 after failed probes have given their reason.
    wait_until("a failed probe with its reason", || async {
        let b = backend(&c, &running, "w1").await;
        b["last_probe_ok"] == false && b["reason"].as_str().unwrap_or("").contains("503")
    })
    .await;
    assert_eq!(get(&c, &running, "/readyz").await.status, StatusCode::OK);

    w.set_synced();
    wait_until("the pool's count follows", || async {
        get(&c, &running, "/readyz").await.json()["pools"]["push"]["ready"] == 1
    })
    .await;

    running.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_shutdown_drains_in_flight_requests() {
    let w = synced_worker().await;
    let running = start(&config_text(&[("w1", w.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    let admin = running.admin_addr();
    let readyz = |c: HttpClient| async move {
        send(
            &c,
            "GET",
            format!("http://{admin}/readyz"),
            &[],
            Bytes::new(),
        )
        .await
    };
    assert_eq!(readyz(c.clone()).await.status, StatusCode::OK);

    // A request in flight keeps the drain going (drain_timeout is 3 s) while we look.
    w.set_delay(Duration::from_millis(2000));
    let slow = {
        let (c, url) = (
            c.clone(),
            format!("http://{}/v1/batch", running.proxy_addrs()[0]),
        );
        tokio::spawn(async move {
            send(
                &c,
                "POST",
                url,
                &[("authorization", "Bearer key-1")],
                Bytes::new(),
            )
            .await
        })
    };
    wait_until("the slow request in flight", || async {
        backend(&c, &running, "w1").await["in_flight"] == 1
    })
    .await;
    let shutdown = tokio::spawn(running.shutdown());

    wait_until("readyz 503 during the drain", || async {
        readyz(c.clone()).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let body = readyz(c.clone()).await.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["status"], "shutting_down");
    assert!(!slow.is_finished(), "the drain was still running");

    // The drain finishes the request, then the instance stops.
    let slow = slow.await.expect("slow request task");
    assert_eq!(slow.status, StatusCode::OK);
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finishes")
        .expect("shutdown task");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_json_has_every_field() {
    let (w1, w2) = (synced_worker().await, unsynced_worker().await);
    let running = start(&config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    wait_until("w2 probed", || async {
        backend(&c, &running, "w2").await["last_probe_ok"] == false
    })
    .await;
    for _ in 0..3 {
        assert_eq!(push(&c, &running, 7).await.status, StatusCode::OK);
    }

    let all = get(&c, &running, "/api/backends").await;
    assert_eq!(all.status, StatusCode::OK);
    assert!(all.header("content-type").starts_with("application/json"));
    let all = all.json();
    assert_eq!(all["generation"], 1);
    let pool = &all["pools"]["push"];
    assert_eq!(pool["ready"], 1);
    let list = pool["backends"].as_array().expect("backends");
    assert_eq!(
        list.iter().map(|b| b["name"].clone()).collect::<Vec<_>>(),
        vec!["w1", "w2"],
        "config order"
    );

    let b1 = &list[0];
    assert_eq!(b1["addr"], w1.addr().to_string());
    assert_eq!(b1["state"], "ready");
    assert_eq!(b1["weight"], 1);
    assert_eq!(b1["in_flight"], 0);
    assert!(b1["reason"].as_str().is_some_and(|r| !r.is_empty()));
    let since = b1["since"].as_str().expect("since");
    humantime::parse_rfc3339(since).expect("since is RFC 3339");
    assert_eq!(
        b1["key_sync"],
        serde_json::json!({"complete": true, "generation": 100, "keys": 1000})
    );
    assert!(b1["last_probe_latency_ms"]
        .as_f64()
        .is_some_and(|ms| ms >= 0.0));
    assert_eq!(b1["last_probe_ok"], true);
    for at in ["last_probe_at", "key_sync_at"] {
        let at = b1[at].as_str().unwrap_or_else(|| panic!("{at} in {b1}"));
        humantime::parse_rfc3339(at).expect("RFC 3339");
    }
    assert_eq!(b1["key_sync_stale"], false);
    assert_eq!(b1["effective_weight"], 1.0, "slow_start = 0s: full weight");
    assert_eq!(b1["contradicted"], 0);
    assert_eq!(b1["requests"], 3);
    assert_eq!(b1["errors"], 0);
    assert_eq!(b1["answers"]["2xx"], 3);
    assert_eq!(b1["removed"], false);

    let b2 = &list[1];
    assert_eq!(b2["state"], "pending");
    assert_eq!(b2["last_probe_ok"], false);
    assert_eq!(
        b2["key_sync"]["complete"], false,
        "a 503 report is still shown"
    );
    assert_eq!(b2["requests"], 0);
    assert_eq!(b2["key_sync_stale"], false, "the 503 brought this report");
    assert_eq!(b2["effective_weight"], 0.0, "pending: no traffic");

    assert_eq!(pool["contract"], "key-sync");
    assert_eq!(pool["slow_start_ms"], 0);
    let stats = &pool["stats"];
    assert!(
        stats["answers"]["2xx"].as_u64().is_some_and(|n| n >= 3),
        "{stats}"
    );
    let latency = &stats["latency"];
    let bounds = latency["bounds"].as_array().expect("bounds");
    let counts = latency["counts"].as_array().expect("counts");
    assert_eq!(counts.len(), bounds.len() + 1, "the last count is +Inf");
    assert_eq!(counts.last(), Some(&latency["count"]));
    assert!(latency["sum_seconds"].as_f64().is_some_and(|s| s > 0.0));
    assert_eq!(stats["no_ready_backend"], 0);
    assert_eq!(stats["retries"], 0);
    assert_eq!(stats["retries_refused"], 0);
    assert_eq!(stats["guard"]["contradicted"], 0);

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_report_the_last_probe_did_not_renew_is_marked_stale() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let running = start(&config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w2", "ready").await;
    let fresh = backend(&c, &running, "w2").await;
    assert_eq!(fresh["key_sync_stale"], false);

    // w2 goes away: its probes are refused, and its last report is kept but marked stale.
    w2.stop().await;
    wait_until("w2's report marked stale", || async {
        backend(&c, &running, "w2").await["key_sync_stale"] == true
    })
    .await;
    let stale = backend(&c, &running, "w2").await;
    assert_eq!(stale["last_probe_ok"], false);
    assert_eq!(
        stale["key_sync"], fresh["key_sync"],
        "the old report is still shown"
    );
    let at = |b: &Value, field: &str| {
        humantime::parse_rfc3339(b[field].as_str().expect(field)).expect("RFC 3339")
    };
    assert!(
        at(&stale, "key_sync_at") < at(&stale, "last_probe_at"),
        "{stale}"
    );
    assert!(
        stale["reason"].as_str().unwrap_or("").contains("refused"),
        "{stale}"
    );
    assert_eq!(backend(&c, &running, "w1").await["key_sync_stale"], false);

    running.shutdown().await;
    w1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradicted_401s_are_counted_for_the_backend_and_its_pool() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let running = start(&config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    wait_state(&c, &running, "w2", "ready").await;
    // w2 loses its keys while its probe keeps claiming a complete sync: its 401s are
    // contradicted by w1 and answered from there.
    w2.forget_keys();
    wait_until("a contradiction", || async {
        assert_eq!(push(&c, &running, 3).await.status, StatusCode::OK);
        backend(&c, &running, "w2").await["contradicted"]
            .as_u64()
            .is_some_and(|n| n > 0)
    })
    .await;
    let all = get(&c, &running, "/api/backends").await.json();
    let pool = &all["pools"]["push"];
    let w2_count = backend(&c, &running, "w2").await["contradicted"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(backend(&c, &running, "w1").await["contradicted"], 0);
    assert!(
        pool["stats"]["guard"]["contradicted"]
            .as_u64()
            .is_some_and(|n| n >= 1 && n <= w2_count),
        "{pool}"
    );

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_weight_ramps_up_during_slow_start() {
    let w = synced_worker().await;
    let text = config_text(&[("w1", w.addr())], "").replace(
        "[pools.push]\nslow_start = \"0s\"",
        "[pools.push]\nslow_start = \"60s\"",
    );
    assert!(text.contains("slow_start = \"60s\""));
    let running = start(&text).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    let b = backend(&c, &running, "w1").await;
    let effective = b["effective_weight"].as_f64().expect("effective_weight");
    // Just admitted into a 60 s ramp: from 1% of the weight, well below the whole of it.
    assert!((0.01..0.2).contains(&effective), "{b}");
    assert_eq!(b["weight"], 1);
    let pool = get(&c, &running, "/api/backends").await.json();
    assert_eq!(pool["pools"]["push"]["slow_start_ms"], 60_000);

    running.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_sequenced_and_followed_with_since() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let running = start(&config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    wait_state(&c, &running, "w2", "ready").await;

    let all = get(&c, &running, "/api/events").await.json();
    let events = all["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 2, "{events:?}");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "newest last: {seqs:?}"
    );
    for e in &events {
        assert_eq!(e["pool"], "push");
        assert_eq!(e["from"], "pending");
        assert_eq!(e["to"], "ready");
        assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()));
        humantime::parse_rfc3339(e["at"].as_str().expect("at")).expect("RFC 3339");
    }
    let last = all["last_seq"].as_u64().expect("last_seq");
    assert_eq!(last, seqs[1]);

    let none = get(&c, &running, &format!("/api/events?since={last}"))
        .await
        .json();
    assert_eq!(none["events"], serde_json::json!([]));
    assert_eq!(none["last_seq"], last);

    assert_eq!(
        post(&c, &running, "/api/backends/push/w2/drain", None)
            .await
            .status,
        StatusCode::OK
    );
    wait_state(&c, &running, "w2", "disabled").await;
    let new = get(&c, &running, &format!("/api/events?since={last}"))
        .await
        .json();
    let new = new["events"].as_array().expect("events");
    let steps: Vec<(String, String, String)> = new
        .iter()
        .map(|e| {
            (
                e["backend"].as_str().unwrap_or("").to_string(),
                e["from"].as_str().unwrap_or("").to_string(),
                e["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            ("w2".into(), "ready".into(), "draining".into()),
            ("w2".into(), "draining".into(), "disabled".into()),
        ]
    );
    assert!(new.iter().all(|e| e["seq"].as_u64() > Some(last)));
    assert_eq!(new[0]["reason"], "drained by operator");

    let bad = get(&c, &running, "/api/events?since=yesterday").await;
    assert_json_error(&bad, StatusCode::BAD_REQUEST);

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_identity_and_never_the_token() {
    let w = synced_worker().await;
    let (dir, token_line) = token_dir();
    let text = config_text(&[("w1", w.addr())], &token_line);
    let (running, path) = start_from_file(&text, &dir).await;
    let c = client();

    let answer = get(&c, &running, "/api/config").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        !answer.text().contains(TOKEN),
        "the token leaked: {}",
        answer.text()
    );
    let cfg = answer.json();
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["sha256"], syncgate::sha256_hex(text.as_bytes()));
    assert_eq!(cfg["path"], path.display().to_string());
    humantime::parse_rfc3339(cfg["loaded_at"].as_str().expect("loaded_at")).expect("RFC 3339");
    assert_eq!(cfg["last_error"], Value::Null);
    assert_eq!(cfg["reloads_ok"], 0);
    assert_eq!(cfg["reloads_failed"], 0);
    assert_eq!(cfg["restart_required"], serde_json::json!([]));
    assert_eq!(cfg["admin_token_set"], true);

    // No other GET shows it either.
    for p in ["/", "/api/backends", "/api/events", "/metrics", "/readyz"] {
        assert!(!get(&c, &running, p).await.text().contains(TOKEN), "{p}");
    }

    running.shutdown().await;
    w.stop().await;
}

/// DESIGN.md: "Changing `[server]` listen addresses needs a restart; a reload says so and
/// applies the rest." The answer and `GET /api/config` name the settings that wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_listeners_says_which_settings_need_a_restart() {
    let w1 = synced_worker().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(&[("w1", w1.addr())], "");
    let (running, path) = start_from_file(&text, &dir).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;

    let changed = text
        .replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]")
        .replace(
            "worker_threads = 1",
            "worker_threads = 1\nmax_connections = 77",
        )
        .replace("request_timeout = \"4s\"", "request_timeout = \"5s\"");
    write_atomically(&path, &changed);
    let answer = post(&c, &running, "/api/reload", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let waiting = serde_json::json!(["server.listen", "server.max_connections"]);
    // The file watcher may have applied the same file first: either way it is generation 2.
    assert_eq!(
        answer.json(),
        serde_json::json!({"generation": 2, "restart_required": waiting})
    );
    let cfg = get(&c, &running, "/api/config").await.json();
    assert_eq!(cfg["restart_required"], waiting);
    // The rest applied; the started values run on.
    let snapshot = running.shared().snapshot();
    assert_eq!(
        snapshot.config.server.request_timeout,
        Duration::from_secs(5)
    );
    assert_eq!(
        snapshot.config.server.listen,
        vec!["127.0.0.1:0".parse().unwrap()]
    );
    assert_ne!(snapshot.config.server.max_connections, 77);
    assert_eq!(
        get(&c, &running, "/api/backends").await.status,
        StatusCode::OK
    );

    // Back to the started values: nothing waits, and the answer is the plain one.
    write_atomically(&path, &text);
    let answer = post(&c, &running, "/api/reload", None).await;
    assert_eq!(answer.json(), serde_json::json!({"generation": 3}));
    let cfg = get(&c, &running, "/api/config").await.json();
    assert_eq!(cfg["restart_required"], serde_json::json!([]));

    running.shutdown().await;
    w1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_via_api_applies_a_good_file_and_rejects_a_broken_one() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let (running, path) = start_from_file(&config_text(&[("w1", w1.addr())], ""), &dir).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;

    // A good file: a new generation with the new backend (pending, then ready).
    let good = config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "");
    write_atomically(&path, &good);
    let answer = post(&c, &running, "/api/reload", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    // The file watcher may have applied the same file first: either way it is generation 2.
    assert_eq!(answer.json(), serde_json::json!({"generation": 2}));
    let cfg = get(&c, &running, "/api/config").await.json();
    assert_eq!(cfg["generation"], 2);
    assert_eq!(cfg["sha256"], syncgate::sha256_hex(good.as_bytes()));
    wait_state(&c, &running, "w2", "ready").await;

    // A broken file: 400 with every error, and the running config stays.
    let broken = good
        .replace("rise = 1", "rise = 0")
        .replace("fall = 1", "fall = 0");
    write_atomically(&path, &broken);
    let answer = post(&c, &running, "/api/reload", None).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let body = answer.json();
    assert!(body["error"].as_str().is_some());
    let errors = body["errors"].as_array().expect("errors");
    assert!(errors.len() >= 2, "every error: {errors:?}");
    let file = path.display().to_string();
    for e in errors {
        let text = e["text"].as_str().expect("text");
        let expected = format!(
            "{}:{}:{}: {}",
            e["file"].as_str().expect("file"),
            e["line"],
            e["col"],
            e["message"].as_str().expect("message")
        );
        assert_eq!(text, expected);
        assert!(text.starts_with(&format!("{file}:")), "{text}");
        assert!(e["line"].as_u64().is_some_and(|l| l >= 1));
    }

    let cfg = get(&c, &running, "/api/config").await.json();
    assert_eq!(cfg["generation"], 2, "the running config stays");
    assert_eq!(cfg["sha256"], syncgate::sha256_hex(good.as_bytes()));
    let last = &cfg["last_error"];
    assert!(last["errors"]
        .as_array()
        .is_some_and(|e| e.len() == errors.len()));
    assert!(["api", "file"].contains(&last["trigger"].as_str().unwrap_or("")));
    assert!(cfg["reloads_failed"].as_u64().is_some_and(|n| n >= 1));
    assert_eq!(
        get(&c, &running, "/api/backends").await.json()["generation"],
        2
    );
    assert_eq!(push(&c, &running, 3).await.status, StatusCode::OK);

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backends_stay_visible_while_they_drain() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let (running, path) = start_from_file(&config_text(&[("w1", w1.addr())], ""), &dir).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;

    w1.set_delay(Duration::from_millis(3000));
    let slow = {
        let (c, url) = (
            c.clone(),
            format!("http://{}/v1/batch", running.proxy_addrs()[0]),
        );
        tokio::spawn(async move {
            send(
                &c,
                "POST",
                url,
                &[("authorization", "Bearer key-1")],
                Bytes::new(),
            )
            .await
        })
    };
    wait_until("the slow request in flight on w1", || async {
        backend(&c, &running, "w1").await["in_flight"] == 1
    })
    .await;

    write_atomically(&path, &config_text(&[("w2", w2.addr())], ""));
    let answer = post(&c, &running, "/api/reload", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());

    let b1 = backend(&c, &running, "w1").await;
    assert_eq!(b1["removed"], true);
    assert_eq!(b1["state"], "draining");
    assert_eq!(b1["reason"], "removed from config");
    assert_eq!(b1["in_flight"], 1);
    assert_eq!(backend(&c, &running, "w2").await["removed"], false);
    let (_, samples) = scrape(&c, &running).await;
    let draining = [("pool", "push"), ("backend", "w1"), ("state", "draining")];
    assert_eq!(value(&samples, "syncgate_backend_state", &draining), 1.0);

    assert_eq!(slow.await.expect("slow request").status, StatusCode::OK);
    wait_until("w1 forgotten once idle", || async {
        let all = get(&c, &running, "/api/backends").await.json();
        all["pools"]["push"]["backends"]
            .as_array()
            .is_some_and(|list| list.iter().all(|b| b["name"] != "w1"))
    })
    .await;

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_requests_finish_then_disables_and_enable_readmits() {
    let (w1, w2) = (synced_worker().await, unsynced_worker().await);
    let running = start(&config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;

    // A slow request in flight on w1 (the only ready backend).
    w1.set_delay(Duration::from_millis(3000));
    let slow = {
        let (c, url) = (
            c.clone(),
            format!("http://{}/v1/batch", running.proxy_addrs()[0]),
        );
        tokio::spawn(async move {
            send(
                &c,
                "POST",
                url,
                &[("authorization", "Bearer key-1")],
                Bytes::new(),
            )
            .await
        })
    };
    wait_until("the slow request in flight on w1", || async {
        backend(&c, &running, "w1").await["in_flight"] == 1
    })
    .await;
    w2.set_synced();
    wait_state(&c, &running, "w2", "ready").await;

    // Drain: draining at once, no new request goes to w1.
    let answer = post(&c, &running, "/api/backends/push/w1/drain", None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["name"], "w1");
    assert_eq!(body["pool"], "push");
    assert_eq!(body["state"], "draining");
    assert_eq!(body["reason"], "drained by operator");
    assert_eq!(body["changed"], true);
    let w1_requests = w1.requests();
    for _ in 0..5 {
        let answer = push(&c, &running, 2).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-worker"), w2.addr().to_string());
    }
    assert_eq!(w1.requests(), w1_requests, "no new request reached w1");
    let b1 = backend(&c, &running, "w1").await;
    assert_eq!(
        b1["state"], "draining",
        "still draining while a request is in flight"
    );
    assert_eq!(b1["in_flight"], 1);

    // The in-flight request finishes normally; then w1 is disabled.
    let slow = slow.await.expect("slow request task");
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.header("x-worker"), w1.addr().to_string());
    wait_state(&c, &running, "w1", "disabled").await;
    // Disabled backends stay out even though their probes pass.
    let answer = push(&c, &running, 2).await;
    assert_eq!(answer.header("x-worker"), w2.addr().to_string());

    // Draining again is a no-op.
    let again = post(&c, &running, "/api/backends/push/w1/drain", None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["state"], "disabled");
    assert_eq!(again.json()["changed"], false);

    // Enable: pending, then ready again once its probes pass.
    w1.set_delay(Duration::ZERO);
    let answer = post(&c, &running, "/api/backends/push/w1/enable", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert!(
        body["state"] == "pending" || body["state"] == "ready",
        "{body}"
    );
    assert_eq!(body["changed"], true);
    wait_state(&c, &running, "w1", "ready").await;

    let events = get(&c, &running, "/api/events").await.json();
    let w1_steps: Vec<String> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["backend"] == "w1")
        .map(|e| {
            format!(
                "{}>{} ({})",
                e["from"].as_str().unwrap_or(""),
                e["to"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(w1_steps.len(), 5, "{w1_steps:?}");
    assert_eq!(w1_steps[1], "ready>draining (drained by operator)");
    assert!(w1_steps[2].starts_with("draining>disabled"), "{w1_steps:?}");
    assert_eq!(w1_steps[3], "disabled>pending (enabled by operator)");
    assert!(w1_steps[4].starts_with("pending>ready"), "{w1_steps:?}");

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_cannot_drain_a_backend_on_the_tokenless_loopback_admin() {
    let w = synced_worker().await;
    let running = start(&config_text(
        &[("w1", w.addr())],
        "allowed_hosts = [\"admin.internal\"]",
    ))
    .await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    let port = running.admin_addr().port();
    let url = format!("http://{}/api/backends/push/w1/drain", running.admin_addr());

    // The attack from the issue: a page on rebind.evil.example, whose name now resolves to
    // 127.0.0.1, posts to its own origin; Origin and Host agree.
    let evil = format!("rebind.evil.example:{port}");
    let evil_origin = format!("http://{evil}");
    let answer = send(
        &c,
        "POST",
        url.clone(),
        &[("host", &evil), ("origin", &evil_origin)],
        Bytes::new(),
    )
    .await;
    let message = assert_json_error(&answer, StatusCode::FORBIDDEN);
    assert!(message.contains("DNS rebinding"), "{message}");
    assert_eq!(backend(&c, &running, "w1").await["state"], "ready");
    // Reads stay open whatever the Host (a scraper may use a service name).
    let answer = send(
        &c,
        "GET",
        format!("http://{}/api/backends", running.admin_addr()),
        &[("host", &evil)],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);

    // The operator's own ways in: localhost, an address, and a name listed in allowed_hosts.
    for (host, action) in [
        (format!("localhost:{port}"), "drain"),
        (format!("admin.internal:{port}"), "enable"),
        (running.admin_addr().to_string(), "drain"),
    ] {
        let origin = format!("http://{host}");
        let answer = send(
            &c,
            "POST",
            url.replace("drain", action),
            &[("host", &host), ("origin", &origin)],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{host}: {}", answer.text());
        assert_eq!(answer.json()["changed"], true, "{host}");
    }

    running.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_need_the_admin_token_and_gets_do_not() {
    let w = synced_worker().await;
    let (dir, token_line) = token_dir();
    let (running, _path) =
        start_from_file(&config_text(&[("w1", w.addr())], &token_line), &dir).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;

    let url = |p: &str| format!("http://{}{p}", running.admin_addr());
    let wrong_tokens = [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[1..])),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
    ];
    for auth in &wrong_tokens {
        for path in ["/api/reload", "/api/backends/push/w1/drain"] {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let answer = send(&c, "POST", url(path), &headers, Bytes::new()).await;
            assert_json_error(&answer, StatusCode::UNAUTHORIZED);
            assert!(answer.header("www-authenticate").starts_with("Bearer"));
        }
    }
    assert_eq!(
        backend(&c, &running, "w1").await["state"],
        "ready",
        "nothing drained"
    );

    // A browser on another site cannot drive the API, token or not.
    let auth = format!("Bearer {TOKEN}");
    let answer = send(
        &c,
        "POST",
        url("/api/backends/push/w1/drain"),
        &[("authorization", &auth), ("origin", "http://evil.example")],
        Bytes::new(),
    )
    .await;
    assert_json_error(&answer, StatusCode::FORBIDDEN);
    assert_eq!(backend(&c, &running, "w1").await["state"], "ready");

    // GETs are open.
    for p in [
        "/",
        "/healthz",
        "/readyz",
        "/api/backends",
        "/api/config",
        "/api/events",
        "/metrics",
    ] {
        assert_eq!(get(&c, &running, p).await.status, StatusCode::OK, "{p}");
    }

    // The right token (the scheme is case-insensitive).
    let answer = post(&c, &running, "/api/reload", Some(TOKEN)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.json()["generation"],
        1,
        "unchanged file: same generation"
    );
    let lower = format!("bearer {TOKEN}");
    let answer = send(
        &c,
        "POST",
        url("/api/backends/push/w1/drain"),
        &[("authorization", &lower)],
        Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["state"], "draining");

    running.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_413() {
    let w = synced_worker().await;
    let running = start(&config_text(&[("w1", w.addr())], "")).await;
    let c = client();

    // With Content-Length.
    let big = Bytes::from(vec![b'x'; 64 * 1024 + 1]);
    let answer = send(
        &c,
        "POST",
        format!("http://{}/api/reload", running.admin_addr()),
        &[],
        big,
    )
    .await;
    assert_json_error(&answer, StatusCode::PAYLOAD_TOO_LARGE);

    // Chunked, without a length: the limit applies while reading.
    let mut stream = tokio::net::TcpStream::connect(running.admin_addr())
        .await
        .expect("connect");
    let chunk = vec![b'y'; 16 * 1024];
    let mut request = b"POST /api/backends/push/w1/drain HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"error\""), "{response}");
    // The drain did not happen.
    assert_ne!(backend(&c, &running, "w1").await["state"], "draining");

    // A declared length over the limit, the whole body sent before reading: the client still
    // reads its 413 (the body is discarded, not left unread under a closing connection).
    // A small send buffer: the body cannot all sit in kernel buffers, so the client's write
    // waits for the server to read it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(16 * 1024).expect("SO_SNDBUF");
    let mut stream = socket.connect(running.admin_addr()).await.expect("connect");
    let body = vec![b'z'; 900 * 1024];
    let mut request = format!(
        "POST /api/reload HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    stream
        .write_all(&request)
        .await
        .expect("the whole body is taken");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    // A small body is fine.
    let answer = send(
        &c,
        "POST",
        format!("http://{}/api/backends/push/w1/drain", running.admin_addr()),
        &[],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);

    running.shutdown().await;
    w.stop().await;
}

/// The families of a metrics text in the order their samples come, each family's lines
/// (its `# HELP`, `# TYPE`, `# UNIT`, then its samples) required to be contiguous, and its
/// descriptor lines to come before its samples.
fn families_in_order(text: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut sampled = false;
    for line in text.lines().filter(|l| !l.is_empty() && *l != "# EOF") {
        let (family, descriptor) = match line.strip_prefix("# ") {
            Some(meta) => (
                meta.split(' ').nth(1).expect("a family name").to_owned(),
                true,
            ),
            None => (
                line.split(['{', ' ']).next().unwrap_or("").to_owned(),
                false,
            ),
        };
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| family.strip_suffix(s))
            .unwrap_or(&family)
            .to_owned();
        if order.last() != Some(&family) {
            assert!(
                !order.contains(&family),
                "the lines of {family} are split by another family's"
            );
            order.push(family);
            sampled = false;
        }
        assert!(
            !(descriptor && sampled),
            "a descriptor line after samples of its family: {line}"
        );
        sampled |= !descriptor;
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_large_pool_are_written_in_pieces_each_family_whole() {
    // More backends than one piece holds (16), in both formats: each family once, its lines
    // together, every backend in every per-backend family, the same series either way.
    let mut workers = Vec::new();
    for _ in 0..40 {
        workers.push(synced_worker().await);
    }
    let names: Vec<String> = (1..=40).map(|i| format!("w{i}")).collect();
    let backends: Vec<(&str, std::net::SocketAddr)> = names
        .iter()
        .zip(&workers)
        .map(|(n, w)| (n.as_str(), w.addr()))
        .collect();
    // fall = 3: a probe answered late on a loaded machine must not eject one of the 40.
    let running = start(&config_text(&backends, "").replace("fall = 1", "fall = 3")).await;
    let c = client();
    for name in &names {
        wait_state(&c, &running, name, "ready").await;
    }

    // Written while sent: chunked, no length known in advance.
    let answer = get(&c, &running, "/metrics").await;
    assert_eq!(answer.header("transfer-encoding"), "chunked");
    assert_eq!(answer.header("content-length"), "");
    let (text, samples) = scrape(&c, &running).await;
    let families = families_in_order(&text);
    for family in [
        "syncgate_backend_requests",
        "syncgate_backend_state",
        "syncgate_backend_in_flight",
        "syncgate_backend_latency_seconds",
        "syncgate_probes",
        "syncgate_ejections",
        "syncgate_config_generation",
    ] {
        assert!(families.iter().any(|f| f == family), "{family} missing");
        assert_eq!(
            text.matches(&format!("# TYPE {family}")).count(),
            1,
            "{family} described once"
        );
    }
    for name in &names {
        let labels = [("pool", "push"), ("backend", name.as_str())];
        assert_eq!(value(&samples, "syncgate_backend_in_flight", &labels), 0.0);
        let ready = [
            ("pool", "push"),
            ("backend", name.as_str()),
            ("state", "ready"),
        ];
        assert_eq!(value(&samples, "syncgate_backend_state", &ready), 1.0);
        assert!(value(&samples, "syncgate_backend_keys", &labels) > 0.0);
    }

    let url = format!("http://{}/metrics", running.admin_addr());
    let accept = [("accept", "application/openmetrics-text;version=1.0.0")];
    let om = send(&c, "GET", url, &accept, Bytes::new()).await.text();
    assert!(om.ends_with("# EOF\n"));
    assert_eq!(om.matches("# EOF").count(), 1);
    families_in_order(&om);
    let series = |samples: Vec<Sample>| {
        let mut v: Vec<_> = samples.into_iter().map(|s| (s.name, s.labels)).collect();
        v.sort();
        v
    };
    assert_eq!(series(parse_metrics(&om)), series(samples));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_scripted_requests() {
    let w = synced_worker().await;
    let running = start(&config_text(&[("w1", w.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;

    // Prometheus asks for OpenMetrics and gets it.
    let url = format!("http://{}/metrics", running.admin_addr());
    let accept = [(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    )];
    let answer = send(&c, "GET", url, &accept, Bytes::new()).await;
    assert!(
        answer
            .header("content-type")
            .starts_with("application/openmetrics-text"),
        "{}",
        answer.header("content-type")
    );
    let om = answer.text();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE syncgate_requests counter\n"));
    // Anyone else gets the classic text format: counters named with `_total`, no `# EOF`.
    let answer = get(&c, &running, "/metrics").await;
    assert_eq!(
        answer.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let (text, before) = scrape(&c, &running).await;
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE syncgate_requests_total counter\n"));
    let series = |samples: &[Sample]| {
        let mut v: Vec<(String, BTreeMap<String, String>)> = samples
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        series(&parse_metrics(&om)),
        series(&before),
        "same series in both formats"
    );
    // A histogram keeps its type in the classic format.
    assert!(text.contains("# TYPE syncgate_request_duration_seconds histogram\n"));
    // Every sample belongs to a family with HELP and TYPE, all named syncgate_* (and the
    // standard process_* families).
    for s in &before {
        assert!(
            s.name.starts_with("syncgate_") || s.name.starts_with("process_"),
            "{}",
            s.name
        );
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| s.name.strip_suffix(suffix))
            .filter(|f| text.contains(&format!("# TYPE {f} ")))
            .unwrap_or(&s.name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no TYPE for {}",
            s.name
        );
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {}",
            s.name
        );
    }

    for _ in 0..5 {
        assert_eq!(push(&c, &running, 1).await.status, StatusCode::OK);
    }
    // An unknown key: 401, passed on (no other backend for a second opinion).
    assert_eq!(
        push(&c, &running, 5000).await.status,
        StatusCode::UNAUTHORIZED
    );
    let (_, after) = scrape(&c, &running).await;

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let push_pool = [("pool", "push")];
    assert_eq!(
        delta(
            "syncgate_requests_total",
            &[("pool", "push"), ("class", "2xx")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "syncgate_requests_total",
            &[("pool", "push"), ("class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "syncgate_requests_total",
            &[("pool", "push"), ("class", "5xx")]
        ),
        0.0
    );
    let w1_2xx = [("pool", "push"), ("backend", "w1"), ("class", "2xx")];
    assert_eq!(delta("syncgate_backend_requests_total", &w1_2xx), 5.0);
    let w1_4xx = [("pool", "push"), ("backend", "w1"), ("class", "4xx")];
    assert_eq!(delta("syncgate_backend_requests_total", &w1_4xx), 1.0);
    assert_eq!(
        delta("syncgate_request_duration_seconds_count", &push_pool),
        6.0
    );
    assert!(delta("syncgate_request_duration_seconds_sum", &push_pool) > 0.0);
    assert_eq!(
        delta(
            "syncgate_guard_outcomes_total",
            &[("pool", "push"), ("outcome", "no_peer")]
        ),
        1.0
    );
    assert_eq!(delta("syncgate_no_ready_backend_total", &push_pool), 0.0);

    // Histogram: cumulative buckets ending in +Inf == count.
    let buckets: Vec<&Sample> = after
        .iter()
        .filter(|s| {
            s.name == "syncgate_request_duration_seconds_bucket" && s.labels["pool"] == "push"
        })
        .collect();
    assert!(buckets.len() >= 2);
    assert!(
        buckets.windows(2).all(|w| w[0].value <= w[1].value),
        "cumulative"
    );
    let last = buckets.last().expect("buckets");
    assert_eq!(last.labels["le"], "+Inf");
    assert_eq!(
        last.value,
        value(
            &after,
            "syncgate_request_duration_seconds_count",
            &push_pool
        )
    );

    // Gauges: one series per state, 1 for the current one.
    for state in ["pending", "ready", "ejected", "draining", "disabled"] {
        let v = value(
            &after,
            "syncgate_backend_state",
            &[("pool", "push"), ("backend", "w1"), ("state", state)],
        );
        assert_eq!(v, if state == "ready" { 1.0 } else { 0.0 }, "{state}");
    }
    assert_eq!(
        value(
            &after,
            "syncgate_backend_in_flight",
            &[("pool", "push"), ("backend", "w1")]
        ),
        0.0
    );
    assert_eq!(value(&after, "syncgate_config_generation", &[]), 1.0);
    let w1_ok = [("pool", "push"), ("backend", "w1"), ("result", "ok")];
    assert!(value(&after, "syncgate_probes_total", &w1_ok) >= 1.0);
    assert_eq!(
        value(&after, "syncgate_config_reloads_total", &[("result", "ok")]),
        0.0
    );
    assert_eq!(
        value(
            &after,
            "syncgate_config_reloads_total",
            &[("result", "failed")]
        ),
        0.0
    );

    // The state gauge follows an operator drain at the next scrape.
    assert_eq!(
        post(&c, &running, "/api/backends/push/w1/drain", None)
            .await
            .status,
        StatusCode::OK
    );
    wait_state(&c, &running, "w1", "disabled").await;
    let (_, drained) = scrape(&c, &running).await;
    let disabled = [("pool", "push"), ("backend", "w1"), ("state", "disabled")];
    assert_eq!(value(&drained, "syncgate_backend_state", &disabled), 1.0);

    running.shutdown().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_self_contained_html() {
    let w = synced_worker().await;
    let running = start(&config_text(&[("w1", w.addr())], "")).await;
    let c = client();

    let page = get(&c, &running, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    let html = page.text();
    assert!(html.starts_with("<!doctype html>"));
    for needle in [
        "/api/backends",
        "/api/events",
        "/api/config",
        "data-backend",
        "data-state",
        "data-alarm",
        "data-action",
        "sessionStorage",
        "setInterval",
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    // No external resources: no CDN, no fonts, no remote scripts.
    for needle in ["http://", "https://", "<script src", "<link"] {
        assert!(!html.contains(needle), "{needle}");
    }

    running.shutdown().await;
    w.stop().await;
}

/// A raw HTTP/1.1 exchange on a fresh connection to the proxy: writes `request` and reads the
/// whole answer (the proxy closes after it, as the request says `Connection: close`).
async fn raw(running: &Running, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(running.proxy_addrs()[0])
        .await
        .expect("connect to the proxy");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The samples of family `name` whose labels include every pair of `labels`.
fn matching<'s>(samples: &'s [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'s Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_answer_and_show_backends_connections_and_the_process() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let mut text = config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "");
    text = text.replace(
        "request_timeout = \"4s\"",
        "request_timeout = \"1500ms\"\nmax_request_body = \"1KiB\"",
    );
    text.push_str("\n[[routes]]\npath_prefix = \"/v1\"\npool = \"push\"\n");
    let running = start(&text).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    wait_state(&c, &running, "w2", "ready").await;
    let (_, before) = scrape(&c, &running).await;

    // At least six answered pushes, and until each worker has had one: p2c picks either for
    // each (six to one worker, one run in 32), and each backend's metrics are checked below.
    let mut pushed = 0;
    while pushed < 6 || w1.requests() == 0 || w2.requests() == 0 {
        pushed += 1;
        assert!(pushed <= 64, "64 pushes all went to one worker");
        assert_eq!(
            push(&c, &running, 100 + pushed).await.status,
            StatusCode::OK
        );
    }
    // syncgate's own answers count too: no route (pool ""), a declared body over the limit.
    let unrouted = raw(
        &running,
        "GET /elsewhere HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(unrouted.starts_with("HTTP/1.1 404"), "{unrouted}");
    let too_large = raw(
        &running,
        "POST /v1/batch HTTP/1.1\r\nhost: a\r\ncontent-length: 5000\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    // A timeout: both workers answer after request_timeout.
    w1.set_delay(Duration::from_secs(4));
    w2.set_delay(Duration::from_secs(4));
    assert_eq!(
        push(&c, &running, 7).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    // A client that leaves before its answer is ready. The workers' count is read before the
    // request is sent: the proxy may forward it before write_all returns here.
    let requests = w1.requests() + w2.requests();
    let mut leaving = tokio::net::TcpStream::connect(running.proxy_addrs()[0])
        .await
        .expect("connect");
    leaving
        .write_all(b"POST /v1/batch HTTP/1.1\r\nhost: a\r\nauthorization: Bearer key-8\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .expect("write");
    wait_until("the leaving client's request reached a worker", || async {
        w1.requests() + w2.requests() > requests
    })
    .await;
    drop(leaving);
    let aborts = [("pool", "push")];
    wait_until("the abort is counted", || async {
        let (_, now) = scrape(&c, &running).await;
        value(&now, "syncgate_client_aborts_total", &aborts) >= 1.0
    })
    .await;
    w1.set_delay(Duration::ZERO);
    w2.set_delay(Duration::ZERO);

    let (_, after) = scrape(&c, &running).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let push_pool = [("pool", "push")];
    assert_eq!(
        delta("syncgate_requests_total", &[("pool", ""), ("class", "4xx")]),
        1.0,
        "the 404 without a route"
    );
    assert_eq!(
        delta("syncgate_request_duration_seconds_count", &[("pool", "")]),
        1.0
    );
    assert_eq!(
        delta(
            "syncgate_requests_total",
            &[("pool", "push"), ("class", "4xx")]
        ),
        1.0,
        "the 413"
    );
    assert_eq!(
        delta(
            "syncgate_requests_total",
            &[("pool", "push"), ("class", "5xx")]
        ),
        1.0,
        "the 504"
    );
    assert_eq!(delta("syncgate_timeouts_total", &push_pool), 1.0);
    assert_eq!(delta("syncgate_client_aborts_total", &push_pool), 1.0);
    // Buckets reach past request_timeout's default (30 s).
    let bounds: Vec<f64> = matching(
        &after,
        "syncgate_request_duration_seconds_bucket",
        &push_pool,
    )
    .iter()
    .map(|s| s.labels["le"].parse().expect("a bound"))
    .collect();
    assert!(bounds.contains(&60.0), "{bounds:?}");

    // Per backend: upstream latency, bytes, the key-sync report.
    let mut answered = 0.0;
    for name in ["w1", "w2"] {
        let b = [("pool", "push"), ("backend", name)];
        answered += delta("syncgate_backend_latency_seconds_count", &b);
        assert!(
            delta("syncgate_backend_sent_bytes_total", &b) > 0.0,
            "{name}"
        );
        assert!(
            delta("syncgate_backend_received_bytes_total", &b) > 0.0,
            "{name}"
        );
        assert_eq!(value(&after, "syncgate_backend_keys", &b), 1000.0);
        assert_eq!(value(&after, "syncgate_backend_key_generation", &b), 100.0);
        assert_eq!(value(&after, "syncgate_backend_sync_complete", &b), 1.0);
        let ok = [("pool", "push"), ("backend", name), ("result", "ok")];
        assert!(value(&after, "syncgate_probes_total", &ok) >= 1.0);
        assert!(value(&after, "syncgate_probe_duration_seconds_count", &b) >= 1.0);
        for cause in [
            "probe_failed",
            "sync_incomplete",
            "key_collapse",
            "connect_failures",
            "consecutive_5xx",
            "contradicted",
            "accepted_at_generation",
        ] {
            let labels = [("pool", "push"), ("backend", name), ("cause", cause)];
            assert_eq!(value(&after, "syncgate_ejections_total", &labels), 0.0);
        }
    }
    // The answered pushes: the timed-out request and the abandoned one were cut before their
    // workers answered.
    assert_eq!(answered, pushed as f64);
    assert_eq!(
        value(&after, "syncgate_pool_ready_generation", &push_pool),
        100.0
    );
    assert_eq!(
        value(&after, "syncgate_pool_ready_backends", &push_pool),
        2.0
    );
    assert!(value(&after, "syncgate_retry_budget_remaining", &push_pool) >= 1.0);

    // Connections: the client's pooled connection is open; max_connections is the default.
    assert!(value(&after, "syncgate_client_connections", &[]) >= 1.0);
    // Exactly one sample (whether the client's connection is parked now depends on timing).
    assert!(value(&after, "syncgate_client_connections_parked", &[]) >= 0.0);
    assert!(delta("syncgate_client_connections_opened_total", &[]) >= 3.0);
    assert_eq!(
        value(&after, "syncgate_client_connections_max", &[]),
        10_000.0
    );

    // Config, build and process.
    let loaded = value(
        &after,
        "syncgate_config_last_reload_success_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(loaded > now - 60.0 && loaded <= now, "{loaded} vs {now}");
    assert_eq!(
        value(&after, "syncgate_config_last_reload_successful", &[]),
        1.0
    );
    let build = matching(&after, "syncgate_build_info", &[]);
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    assert!(!build[0].labels["commit"].is_empty());
    assert!(value(&after, "process_cpu_seconds_total", &[]) > 0.0);
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&after, "process_open_fds", &[]) >= 3.0);
    let started = value(&after, "process_start_time_seconds", &[]);
    assert!(started > now - 3600.0 && started <= now + 1.0, "{started}");

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_decided_by_the_probes_is_counted_by_pool_backend_and_cause() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let running = start(&config_text(&[("w1", w1.addr()), ("w2", w2.addr())], "")).await;
    let c = client();
    wait_state(&c, &running, "w1", "ready").await;
    wait_state(&c, &running, "w2", "ready").await;

    // The probe answers 503: with fall = 1, the next probe ejects w1.
    w1.set_probe_override(Some((503, "{}".into())));
    wait_state(&c, &running, "w1", "ejected").await;
    // w2 reports its sync incomplete: out at once, whatever fall says.
    let incomplete = r#"{"key_sync": {"complete": false, "generation": 100, "keys": 10}}"#;
    w2.set_probe_override(Some((200, incomplete.into())));
    wait_state(&c, &running, "w2", "ejected").await;

    let (_, samples) = scrape(&c, &running).await;
    let ejections = |backend: &str, cause: &str| {
        value(
            &samples,
            "syncgate_ejections_total",
            &[("pool", "push"), ("backend", backend), ("cause", cause)],
        )
    };
    assert_eq!(ejections("w1", "probe_failed"), 1.0);
    assert_eq!(ejections("w2", "probe_failed"), 0.0);
    assert_eq!(ejections("w2", "sync_incomplete"), 1.0);
    let failed = [("pool", "push"), ("backend", "w1"), ("result", "failed")];
    assert!(value(&samples, "syncgate_probes_total", &failed) >= 1.0);
    let ok = [("pool", "push"), ("backend", "w2"), ("result", "ok")];
    assert!(value(&samples, "syncgate_probes_total", &ok) >= 1.0);
    assert_eq!(
        value(
            &samples,
            "syncgate_pool_ready_backends",
            &[("pool", "push")]
        ),
        0.0
    );
    assert!(matching(&samples, "syncgate_pool_ready_generation", &[]).is_empty());

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_leaves_the_metrics_once_it_is_forgotten() {
    let (w1, w2) = (synced_worker().await, synced_worker().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let text = |backends: &[(&str, SocketAddr)]| config_text(backends, "");
    let (running, path) =
        start_from_file(&text(&[("w1", w1.addr()), ("w2", w2.addr())]), &dir).await;
    let c = client();
    wait_state(&c, &running, "w2", "ready").await;
    let series =
        |samples: &[Sample]| matching(samples, "syncgate_probes_total", &[("backend", "w2")]).len();
    let (_, samples) = scrape(&c, &running).await;
    assert_eq!(series(&samples), 2, "ok and failed");

    write_atomically(&path, &text(&[("w1", w1.addr())]));
    assert_eq!(
        post(&c, &running, "/api/reload", None).await.status,
        StatusCode::OK
    );
    // Idle, it drains at once and is forgotten: every series of it goes.
    wait_until("w2's series are gone", || async {
        let (text, _) = scrape(&c, &running).await;
        !text.contains("backend=\"w2\"")
    })
    .await;
    let (_, samples) = scrape(&c, &running).await;
    assert_eq!(series(&samples), 0);
    assert_eq!(
        matching(&samples, "syncgate_probes_total", &[("backend", "w1")]).len(),
        2
    );

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}
