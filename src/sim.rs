//! Simulated push-API worker.
//!
//! A [`SimWorker`] is a real HTTP server (hyper 1.x, HTTP/1.1 keep-alive and HTTP/2 with prior
//! knowledge on the same port) that behaves like a push-API worker as described in the design's
//! "readiness contract". It is used by `syncgate demo`, the integration tests and the
//! benchmarks.
//!
//! The worker holds a set of active account keys `key-0 .. key-{total_keys-1}`; it "holds" the
//! first `held` of them. Its behaviour:
//!
//! * `/ready` is the readiness probe. When the key sync is complete it answers
//!   `200 {"key_sync":{"complete":true,"generation":G,"keys":N}}`; while syncing it answers
//!   `503 {"key_sync":{"complete":false,"generation":0,"keys":held}}`. A probe override forces
//!   any status and body. After [`SimWorker::forget_keys`] the probe keeps reporting what it
//!   reported before (it lies), modelling a worker that lost its keys between two probes.
//! * `/echo` answers `200` with a JSON description of the request it received (method, path with
//!   query, headers, body length, HTTP version), without any key check.
//! * Every other path is a push request: the account key is read from
//!   `authorization: Bearer key-N` (or `x-api-key: key-N`); a held key gets
//!   `200 {"ok":true,"worker":"<addr>","bytes":<body length>}`, anything else
//!   `401 {"error":"unknown account key"}`.
//!
//! Every non-probe request is counted, may be delayed ([`SimWorker::set_delay`]) or answered with
//! a forced status ([`SimWorker::set_status_override`]), and its answer is counted by status.
//! Every answer carries `x-worker: <addr>`.
//!
//! The key sync needs no background task: [`SimWorker::begin_sync`] records a linear ramp and the
//! number of held keys is computed from the elapsed time whenever it is needed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Path of the readiness probe served by a simulated worker.
const PROBE_PATH: &str = "/ready";
/// Path of the echo endpoint served by a simulated worker.
const ECHO_PATH: &str = "/echo";
/// One counter per possible status code (hyper accepts 100..=999).
const STATUS_SLOTS: usize = 1000;

/// Options of a simulated worker.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Size of the full active-key set; the keys are `key-0` .. `key-{total_keys-1}`.
    pub total_keys: u64,
    /// Key-set generation reported by the probe when fully synced.
    pub generation: u64,
    /// `true`: the worker starts holding all keys. `false`: it starts empty (no keys held, sync
    /// incomplete) and waits for [`SimWorker::begin_sync`] or [`SimWorker::set_synced`].
    pub synced: bool,
}

impl Default for SimOptions {
    /// 1000 keys, generation 100, synced.
    fn default() -> Self {
        SimOptions {
            total_keys: 1000,
            generation: 100,
            synced: true,
        }
    }
}

/// How many keys the worker holds, possibly as a function of time.
#[derive(Debug, Clone, Copy)]
enum Holding {
    /// A fixed number of keys.
    Fixed(u64),
    /// A linear ramp from `from` keys at `start` to all keys at `start + duration`.
    Ramp {
        from: u64,
        start: Instant,
        duration: Duration,
    },
}

/// What the probe reports: the sync state of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    complete: bool,
    generation: u64,
    keys: u64,
}

/// The current key plan; replaced as a whole, read lock-free.
#[derive(Debug, Clone, Copy)]
struct Plan {
    holding: Holding,
    /// Set by `forget_keys`: the probe keeps answering this report whatever the keys held.
    frozen_report: Option<Report>,
}

/// Shared state of a simulated worker (the server tasks and the [`SimWorker`] handle).
#[derive(Debug)]
struct SimState {
    total_keys: u64,
    generation: u64,
    plan: ArcSwap<Plan>,
    probe_override: Mutex<Option<(u16, String)>>,
    /// Forced status for non-probe requests; 0 means none.
    status_override: AtomicU32,
    /// Delay before answering non-probe requests, in nanoseconds; 0 means none.
    delay_nanos: AtomicU64,
    requests: AtomicU64,
    probes: AtomicU64,
    status_counts: Box<[AtomicU64]>,
    /// `x-worker` header value (the worker's address).
    worker: HeaderValue,
    /// The worker's address as a JSON string literal (with quotes).
    worker_json: String,
}

impl SimState {
    fn new(opts: &SimOptions, addr: SocketAddr) -> SimState {
        let held = if opts.synced { opts.total_keys } else { 0 };
        let addr_text = addr.to_string();
        SimState {
            total_keys: opts.total_keys,
            generation: opts.generation,
            plan: ArcSwap::from_pointee(Plan {
                holding: Holding::Fixed(held),
                frozen_report: None,
            }),
            probe_override: Mutex::new(None),
            status_override: AtomicU32::new(0),
            delay_nanos: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            status_counts: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            // A socket address is always a valid header value; the fallback is unreachable.
            worker: HeaderValue::from_str(&addr_text)
                .unwrap_or_else(|_| HeaderValue::from_static("sim-worker")),
            worker_json: serde_json::Value::String(addr_text).to_string(),
        }
    }

    /// Keys held now according to `plan`.
    fn held_in(&self, plan: &Plan, now: Instant) -> u64 {
        match plan.holding {
            Holding::Fixed(n) => n.min(self.total_keys),
            Holding::Ramp {
                from,
                start,
                duration,
            } => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= duration || from >= self.total_keys {
                    return self.total_keys;
                }
                let missing = u128::from(self.total_keys - from);
                let grown = missing * elapsed.as_nanos() / duration.as_nanos().max(1);
                // grown < missing because elapsed < duration, so it fits in u64.
                from + u64::try_from(grown).unwrap_or(self.total_keys - from)
            }
        }
    }

    fn held(&self) -> u64 {
        self.held_in(&self.plan.load(), Instant::now())
    }

    /// The report the probe gives for `plan` (ignoring the probe override).
    fn report_in(&self, plan: &Plan, now: Instant) -> Report {
        if let Some(frozen) = plan.frozen_report {
            return frozen;
        }
        let keys = self.held_in(plan, now);
        let complete = keys >= self.total_keys;
        Report {
            complete,
            generation: if complete { self.generation } else { 0 },
            keys,
        }
    }

    fn set_plan(&self, plan: Plan) {
        self.plan.store(Arc::new(plan));
    }

    fn count_status(&self, status: StatusCode) {
        let slot = usize::from(status.as_u16()).min(STATUS_SLOTS - 1);
        if let Some(counter) = self.status_counts.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    fn status_override(&self) -> Option<StatusCode> {
        match self.status_override.load(Ordering::Relaxed) {
            0 => None,
            code => u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok()),
        }
    }

    fn probe_override(&self) -> Option<(u16, String)> {
        match self.probe_override.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A running simulated worker. Dropping it stops the server too (without waiting); prefer
/// [`SimWorker::stop`], which waits until the listener and every connection are closed.
#[derive(Debug)]
pub struct SimWorker {
    addr: SocketAddr,
    state: Arc<SimState>,
    token: CancellationToken,
    tracker: TaskTracker,
    task: Option<JoinHandle<()>>,
}

impl SimWorker {
    /// Starts a simulated worker on `127.0.0.1` with an ephemeral port.
    pub async fn start(opts: SimOptions) -> std::io::Result<SimWorker> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts a simulated worker bound to `addr` (with `SO_REUSEADDR`, so a stopped worker can
    /// be restarted on the same port).
    pub async fn start_on(addr: SocketAddr, opts: SimOptions) -> std::io::Result<SimWorker> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(&opts, addr));
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&state),
            token.clone(),
            tracker.clone(),
        ));
        tracing::debug!(%addr, ?opts, "simulated worker started");
        Ok(SimWorker {
            addr,
            state,
            token,
            tracker,
            task: Some(task),
        })
    }

    /// The address the worker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a key sync: the keys held grow linearly from the current count to all keys over
    /// `duration`; the sync is complete when all are held. Ends any [`forget_keys`] lie.
    ///
    /// [`forget_keys`]: SimWorker::forget_keys
    pub fn begin_sync(&self, duration: Duration) {
        let now = Instant::now();
        let from = self.state.held_in(&self.state.plan.load(), now);
        let holding = if duration.is_zero() {
            Holding::Fixed(self.state.total_keys)
        } else {
            Holding::Ramp {
                from,
                start: now,
                duration,
            }
        };
        self.state.set_plan(Plan {
            holding,
            frozen_report: None,
        });
    }

    /// Holds all keys at once: the sync is complete. Ends any [`forget_keys`] lie.
    ///
    /// [`forget_keys`]: SimWorker::forget_keys
    pub fn set_synced(&self) {
        self.state.set_plan(Plan {
            holding: Holding::Fixed(self.state.total_keys),
            frozen_report: None,
        });
    }

    /// Drops every key (every push request is answered `401`) while the probe keeps answering
    /// the report it gave just before (the complete report if the worker was synced): this
    /// models a worker that lost its key database between two probes.
    pub fn forget_keys(&self) {
        let now = Instant::now();
        let plan = self.state.plan.load();
        let report = self.state.report_in(&plan, now);
        self.state.set_plan(Plan {
            holding: Holding::Fixed(0),
            frozen_report: Some(report),
        });
    }

    /// Forces the probe's answer to `status` and `body` (`Some`), or restores the real report
    /// (`None`). A status that is not a valid HTTP status is answered as `500`.
    pub fn set_probe_override(&self, body: Option<(u16, String)>) {
        match self.state.probe_override.lock() {
            Ok(mut guard) => *guard = body,
            Err(poisoned) => *poisoned.into_inner() = body,
        }
    }

    /// Answers every non-probe request with `status` (`Some`, for instance 500 or 503), or
    /// restores normal answers (`None`). A status that is not a valid HTTP status is ignored.
    pub fn set_status_override(&self, status: Option<u16>) {
        let code = status
            .filter(|s| StatusCode::from_u16(*s).is_ok())
            .map_or(0, u32::from);
        self.state.status_override.store(code, Ordering::Relaxed);
    }

    /// Sleeps `delay` before answering each non-probe request (`Duration::ZERO`: no delay).
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.state.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Number of non-probe requests received.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Number of probe requests received.
    pub fn probes(&self) -> u64 {
        self.state.probes.load(Ordering::Relaxed)
    }

    /// Answers given to non-probe requests, as `(status, count)` pairs sorted by status, only
    /// statuses given at least once.
    pub fn status_counts(&self) -> Vec<(u16, u64)> {
        self.state
            .status_counts
            .iter()
            .enumerate()
            .filter_map(|(status, counter)| {
                let n = counter.load(Ordering::Relaxed);
                let status = u16::try_from(status).ok()?;
                (n > 0).then_some((status, n))
            })
            .collect()
    }

    /// Number of keys the worker holds now.
    pub fn held_keys(&self) -> u64 {
        self.state.held()
    }

    /// Stops the worker: stops accepting, closes the listener (connections are refused
    /// afterwards) and closes every open connection, then returns.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::warn!(addr = %self.addr, %err, "simulated worker accept task failed");
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
        tracing::debug!(addr = %self.addr, "simulated worker stopped");
    }
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Executor for hyper's HTTP/2 stream tasks: tracked, and cancelled with the worker.
#[derive(Clone)]
struct SimExec {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl<F> hyper::rt::Executor<F> for SimExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = token.cancelled() => {}
            }
        });
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<SimState>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let builder = Arc::new(ConnBuilder::new(SimExec {
        token: token.clone(),
        tracker: tracker.clone(),
    }));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = token.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // Typically EMFILE: back off a little instead of spinning.
                tracing::debug!(%err, "simulated worker accept failed");
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
                }
            }
        };
        // Best effort: a failure only costs latency.
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        let token = token.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = conn => {
                    if let Err(err) = result {
                        tracing::trace!(%err, "simulated worker connection ended with an error");
                    }
                }
                // Dropping the connection closes the socket.
                _ = token.cancelled() => {}
            }
        });
    }
    // The listener is dropped here: new connections are refused.
}

async fn handle(state: &SimState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == PROBE_PATH {
        state.probes.fetch_add(1, Ordering::Relaxed);
        return probe_answer(state);
    }
    state.requests.fetch_add(1, Ordering::Relaxed);
    let delay = state.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let response = request_answer(state, req).await;
    state.count_status(response.status());
    response
}

fn probe_answer(state: &SimState) -> Response<Full<Bytes>> {
    if let Some((status, body)) = state.probe_override() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return respond(state, status, body);
    }
    let report = state.report_in(&state.plan.load(), Instant::now());
    let status = if report.complete {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        r#"{{"key_sync":{{"complete":{},"generation":{},"keys":{}}}}}"#,
        report.complete, report.generation, report.keys
    );
    respond(state, status, body)
}

async fn request_answer(state: &SimState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(status) = state.status_override() {
        // Still consume the body so the connection stays usable.
        let _ = req.into_body().collect().await;
        let body = format!(
            r#"{{"error":"forced status","status":{}}}"#,
            status.as_u16()
        );
        return respond(state, status, body);
    }
    let (parts, body) = req.into_parts();
    let body_len = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(err) => {
            return respond(
                state,
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("reading the body failed: {err}")}).to_string(),
            );
        }
    };
    if parts.uri.path() == ECHO_PATH {
        return respond(state, StatusCode::OK, echo_body(&parts, body_len));
    }
    match account_key(&parts.headers) {
        Some(n) if n < state.held() => {
            let body = format!(
                r#"{{"ok":true,"worker":{},"bytes":{}}}"#,
                state.worker_json, body_len
            );
            respond(state, StatusCode::OK, body)
        }
        _ => respond(
            state,
            StatusCode::UNAUTHORIZED,
            r#"{"error":"unknown account key"}"#.to_owned(),
        ),
    }
}

/// The account key number `N` of `key-N`, from `authorization: Bearer key-N` or
/// `x-api-key: key-N`.
fn account_key(headers: &HeaderMap) -> Option<u64> {
    let from_auth = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .and_then(parse_key)
        });
    from_auth.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_key(v.trim()))
    })
}

fn parse_key(key: &str) -> Option<u64> {
    let digits = key.strip_prefix("key-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn echo_body(parts: &hyper::http::request::Parts, body_len: usize) -> String {
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let mut values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.remove(0)
        } else {
            serde_json::Value::Array(values)
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    serde_json::json!({
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body_len": body_len,
        "version": format!("{:?}", parts.version),
    })
    .to_string()
}

fn respond(state: &SimState, status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-worker", state.worker.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
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
                // A held key answers, a key not yet held does not.
                assert_eq!(push(&c, addr, "key-0", "").await.status, 200);
                assert_eq!(push(&c, addr, "key-99", "").await.status, 401);
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
}
