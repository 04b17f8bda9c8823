//! The simulated worker's server side: the accept loop and the answers to probes, health
//! checks, pushes and `/echo` (see the parent module for the behaviour).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SimState;

/// Path of the readiness probe served by a simulated worker.
const PROBE_PATH: &str = "/ready";
/// Path of the liveness check served by a simulated worker (what an ordinary load balancer's
/// health check asks).
const HEALTH_PATH: &str = "/healthz";
/// Path of the echo endpoint served by a simulated worker.
const ECHO_PATH: &str = "/echo";

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

/// Accepts connections and serves them until `token` is cancelled.
pub(super) async fn accept_loop(
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
        let _in_flight = ProbeInFlight::new(state);
        let delay = Duration::from_nanos(state.probe_delay_nanos.load(Ordering::Relaxed));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        return probe_answer(state);
    }
    if req.uri().path() == HEALTH_PATH {
        // Up and answering, whatever its keys: all an ordinary health check learns.
        state.probes.fetch_add(1, Ordering::Relaxed);
        return respond(state, StatusCode::OK, r#"{"status":"ok"}"#.to_owned());
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

/// Counts a probe being answered while alive (also when its connection goes away first).
struct ProbeInFlight<'a>(&'a SimState);

impl<'a> ProbeInFlight<'a> {
    fn new(state: &'a SimState) -> ProbeInFlight<'a> {
        let now = state.probes_in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        state.max_probes_in_flight.fetch_max(now, Ordering::Relaxed);
        ProbeInFlight(state)
    }
}

impl Drop for ProbeInFlight<'_> {
    fn drop(&mut self) {
        self.0.probes_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
        Some(n) if state.holds(n) => {
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
