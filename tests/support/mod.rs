//! Test support: syncgate in-process on 127.0.0.1:0 in front of simulated workers that are
//! real HTTP servers, a real HTTP client, deadline-bounded waiting, and a test DNS server
//! ([`dns`]).

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod dns;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::Config;
use syncgate::Running;
use syncgate::State;

/// A real HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge client.
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What [`pool_config`] says of the access log: off, so that test output is not a line per
/// request. Tests of the access log replace it.
pub const ACCESS_LOG_OFF: &str = "[server.access_log]\nenabled = false\n";

/// A config with one pool `push` over `backends` (`(name, addr)`), fast probes, the access
/// log off ([`ACCESS_LOG_OFF`]), and `extra` TOML appended to the pool table (e.g.
/// `retries = 1`).
pub fn pool_config(backends: &[(&str, SocketAddr)], pool_extra: &str, probe_extra: &str) -> String {
    // Fast probe defaults; a key given in `probe_extra` replaces its default. The timeout is
    // longer than the interval (probes never overlap): a probe answered late on a loaded
    // machine must not eject a backend a test expects to stay ready.
    let mut probe: Vec<String> = [
        "interval = \"50ms\"",
        "timeout = \"1s\"",
        "rise = 2",
        "fall = 2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for line in probe_extra.lines().filter(|l| l.contains('=')) {
        let key = line.split('=').next().unwrap_or("").trim();
        probe.retain(|p| p.split('=').next().unwrap_or("").trim() != key);
        probe.push(line.to_string());
    }
    let probe = probe.join("\n");
    let mut s = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
worker_threads = 1
request_timeout = "2s"
drain_timeout = "3s"

[admin]
listen = "127.0.0.1:0"

{ACCESS_LOG_OFF}
[pools.push]
slow_start = "0s"
{pool_extra}

[pools.push.probe]
{probe}
"#
    );
    for (name, addr) in backends {
        s.push_str(&format!(
            "\n[[pools.push.backends]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
        ));
    }
    s
}

/// Starts syncgate with this config text.
pub async fn start(toml: &str) -> Running {
    let cfg = Config::parse(toml, None).expect("test config is valid");
    syncgate::start(cfg).await.expect("syncgate starts")
}

/// Starts `n` synced simulated workers.
pub async fn workers(n: usize) -> Vec<SimWorker> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            SimWorker::start(SimOptions::default())
                .await
                .expect("worker starts"),
        );
    }
    v
}

/// `(name, addr)` pairs `w1..wn` for these workers.
pub fn named(workers: &[SimWorker]) -> Vec<(String, SocketAddr)> {
    workers
        .iter()
        .enumerate()
        .map(|(i, w)| (format!("w{}", i + 1), w.addr()))
        .collect()
}

/// Borrowing view of [`named`] for [`pool_config`].
pub fn refs(named: &[(String, SocketAddr)]) -> Vec<(&str, SocketAddr)> {
    named.iter().map(|(n, a)| (n.as_str(), *a)).collect()
}

/// The state of backend `name` in pool `push`.
pub fn state_of(running: &Running, name: &str) -> Option<State> {
    running
        .shared()
        .snapshot()
        .backends()
        .find(|b| &*b.name == name)
        .map(|b| b.state())
}

/// Waits until backend `name` is in `state`.
pub async fn wait_state(running: &Running, name: &str, state: State) {
    wait_until(
        Duration::from_secs(5),
        &format!("{name} {state}"),
        || async { state_of(running, name) == Some(state) },
    )
    .await;
}

/// An answer, fully read.
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Sends `method path` with account key `key` (if any) and reads the whole answer.
pub async fn send(
    client: &HttpClient,
    proxy: SocketAddr,
    method: &str,
    path: &str,
    key: Option<u64>,
    body: Bytes,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"));
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer key-{k}"));
    }
    let resp = client
        .request(req.body(Full::new(body)).expect("request"))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET path` with a valid key.
pub async fn get(client: &HttpClient, proxy: SocketAddr, key: u64) -> Answer {
    send(client, proxy, "GET", "/v1/batch", Some(key), Bytes::new())
        .await
        .expect("request through the proxy")
}
