//! The hyper service: route → pick → forward → guard.
//!
//! One call per client request. It reads the current [`Snapshot`] once, so a request runs to
//! its end on the config it began with, whatever reloads happen meanwhile.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::body::{BodyError, ReqBody, RespBody};
use crate::conn::ConnInfo;
use crate::metrics::GuardOutcome;
use crate::outlier;
use crate::snapshot::{Pool, Shared, Snapshot};
use crate::upstream::{self, Attempt, ConnectError, Pooled};
use http_body_util::{BodyExt, Limited};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one client request. Never fails: every problem becomes an HTTP answer.
pub async fn serve(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, std::convert::Infallible> {
    let snapshot = shared.snapshot();
    let mut req = req;
    // The id travels upstream and back to the client, and names the request in our logs.
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    };
    let mut resp = route_and_forward(&shared, &snapshot, conn, req, &request_id).await;
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    Ok(resp)
}

async fn route_and_forward(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RespBody> {
    let routed = {
        let host = request_host(&req);
        snapshot.route(host.as_deref().unwrap_or(""), req.uri().path())
    };
    let Some(pool) = routed else {
        return error(StatusCode::NOT_FOUND, "no route", request_id);
    };
    let server = &snapshot.config.server;
    if let Some(len) = content_length(req.headers()) {
        if len > server.max_request_body {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                request_id,
            );
        }
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started) + server.request_timeout;
    let result = tokio::time::timeout_at(
        deadline,
        forward(
            shared,
            pool,
            conn,
            req,
            Limits {
                max_body: server.max_request_body,
                deadline,
            },
            request_id,
        ),
    )
    .await;
    let resp = match result {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(pool = %pool.name, request_id = ?request_id, "upstream timeout");
            error(StatusCode::GATEWAY_TIMEOUT, "upstream timeout", request_id)
        }
    };
    pool.stats.record(resp.status(), started.elapsed());
    resp
}

/// The request's body limit and its `request_timeout` deadline.
struct Limits {
    max_body: u64,
    deadline: tokio::time::Instant,
}

/// Forwards to a ready backend, retrying connect failures on other backends, and asks a
/// second opinion before a guarded answer (401/403) reaches the client.
async fn forward(
    shared: &Shared,
    pool: &Pool,
    conn: ConnInfo,
    req: Request<Incoming>,
    limits: Limits,
    request_id: &HeaderValue,
) -> Response<RespBody> {
    let hash_key = hash_key(pool, req.headers());
    pool.budget.deposit();
    let (parts, body) = req.into_parts();
    let replay_limit = pool.guard.max_replay_body;
    // Same deadline as the caller's 504, polled first: a body the client has not finished
    // sending by then is the client's delay (408, like nginx's client_body_timeout).
    let read = read_body(body, &parts.headers, replay_limit, limits.max_body);
    let body = match tokio::time::timeout_at(limits.deadline, read).await {
        Ok(Ok(b)) => b,
        Err(_) => {
            let mut resp = error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
                request_id,
            );
            // The rest of the body may still come: the connection cannot be reused.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        Ok(Err(status)) => {
            let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request body too large"
            } else {
                "malformed request body"
            };
            return error(status, msg, request_id);
        }
    };
    let mut upstream_req = upstream_request(parts, body, &conn);
    let mut tried: Vec<u64> = Vec::new();
    loop {
        let Some(backend) = pool.pick(hash_key.as_deref(), &tried) else {
            if tried.is_empty() {
                return no_ready_backend(pool);
            }
            return error(
                StatusCode::BAD_GATEWAY,
                "no backend could be reached",
                request_id,
            );
        };
        // A copy for a second opinion, only when one could be asked: the body was kept and the
        // pool has another backend.
        let replay = if !pool.guard.statuses.is_empty() && pool.backends.len() > 1 {
            clone_request(&upstream_req)
        } else {
            None
        };
        let in_flight = backend.start_request();
        match upstream::send(backend, pool.tls.as_ref(), upstream_req).await {
            Attempt::Answered(resp, send) => {
                outlier::record_answer(shared, pool, backend, resp.status());
                if pool.is_guarded(resp.status()) {
                    let first = Upstream {
                        resp,
                        send,
                        in_flight,
                    };
                    let cx = SecondOpinion {
                        shared,
                        pool,
                        hash_key: hash_key.as_deref(),
                        request_id,
                    };
                    // Boxed: rare, and large enough to bloat every request's future.
                    return Box::pin(second_opinion(&cx, first, replay, tried)).await;
                }
                return client_response(resp, send, in_flight);
            }
            Attempt::NotSent(back, err) => {
                connect_failed(shared, pool, backend, &err, request_id);
                tried.push(backend.id);
                if tried.len() > pool.retries as usize {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "upstream connect failed",
                        request_id,
                    );
                }
                if !pool.budget.try_spend() {
                    pool.stats.retries_refused.fetch_add(1, Ordering::Relaxed);
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "upstream connect failed (retry budget spent)",
                        request_id,
                    );
                }
                pool.stats.retries.fetch_add(1, Ordering::Relaxed);
                upstream_req = back;
            }
            Attempt::Failed(err) => return upstream_failed(pool, backend, &err, request_id),
        }
    }
}

fn connect_failed(
    shared: &Shared,
    pool: &Pool,
    backend: &Backend,
    err: &ConnectError,
    request_id: &HeaderValue,
) {
    outlier::record_connect_failure(shared, pool, backend);
    log_connect_failure(backend, err, request_id);
}

fn upstream_failed(
    pool: &Pool,
    backend: &Backend,
    err: &hyper::Error,
    request_id: &HeaderValue,
) -> Response<RespBody> {
    backend.answers.record(None);
    if is_too_large(err) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            request_id,
        );
    }
    tracing::warn!(pool = %pool.name, backend = %backend.name, error = %err, request_id = ?request_id, "upstream request failed");
    error(
        StatusCode::BAD_GATEWAY,
        "upstream request failed",
        request_id,
    )
}

/// A worker's answer with its connection and in-flight count.
struct Upstream {
    resp: Response<Incoming>,
    send: upstream::Conn,
    in_flight: crate::backend::InFlight,
}

struct SecondOpinion<'a> {
    shared: &'a Shared,
    pool: &'a Pool,
    hash_key: Option<&'a [u8]>,
    request_id: &'a HeaderValue,
}

/// Guarded answers larger than this are not kept for a possible pass-through.
const MAX_GUARDED_ANSWER: usize = 64 * 1024;

/// Replays a request that got a guarded answer on another ready backend. Confirmed: the
/// client gets the guarded answer. Contradicted: the client gets the peer's answer and the
/// first backend is charged. No other ready backend, or a body too large to keep: the first
/// answer passes, as DESIGN.md says. A peer exists but cannot be asked (budget spent) or
/// cannot give an opinion (unreachable, 5xx): `503` with `Retry-After`, because an
/// unconfirmed 401 must never reach a client and agents retry a 503.
async fn second_opinion(
    cx: &SecondOpinion<'_>,
    first: Upstream,
    replay: Option<Request<ReqBody>>,
    mut exclude: Vec<u64>,
) -> Response<RespBody> {
    let (pool, stats) = (cx.pool, &cx.pool.stats);
    let first_backend = first.in_flight.backend().clone();
    let Some(mut req) = replay else {
        stats.guard_outcome(if pool.backends.len() > 1 {
            GuardOutcome::TooLarge
        } else {
            GuardOutcome::NoPeer
        });
        return client_response(first.resp, first.send, first.in_flight);
    };
    // "Another ready backend exists" counts peers that already failed to connect for this
    // request: their failure leaves the answer unconfirmed, it does not make it confirmed.
    if pool.pick(cx.hash_key, &[first_backend.id]).is_none() {
        stats.guard_outcome(GuardOutcome::NoPeer);
        return client_response(first.resp, first.send, first.in_flight);
    }
    // Peers that gave no opinion (unreachable, 5xx, broken answer); bounded like retries.
    let mut silent = exclude.len() as u32;
    exclude.push(first_backend.id);
    let no_budget = || {
        stats.guard_outcome(GuardOutcome::BudgetSpent);
        retry_later(
            pool,
            "retry budget spent: answer not confirmed",
            cx.request_id,
        )
    };
    if !pool.budget.try_spend() {
        return no_budget();
    }
    // Read the first answer now: its connection goes back to the pool, and it is still there
    // to pass on if the peers stop being ready before one is picked.
    let (parts, body) = first.resp.into_parts();
    let first_body = Limited::new(
        Pooled::new(body, first.send, first.in_flight),
        MAX_GUARDED_ANSWER,
    )
    .collect()
    .await
    .ok()
    .map(|c| c.to_bytes());
    stats.guard_outcome(GuardOutcome::Replayed);
    let unconfirmed = || {
        stats.guard_outcome(GuardOutcome::Unconfirmed);
        retry_later(pool, "no backend could confirm the answer", cx.request_id)
    };
    loop {
        let Some(peer) = pool.pick(cx.hash_key, &exclude) else {
            if let (0, Some(b)) = (silent, &first_body) {
                stats.guard_outcome(GuardOutcome::NoPeer);
                return buffered_response(parts, b.clone());
            }
            return unconfirmed();
        };
        // A copy for the next peer, should this one give no opinion (rare path).
        let copy = clone_request(&req);
        let in_flight = peer.start_request();
        let back = match upstream::send(peer, pool.tls.as_ref(), req).await {
            Attempt::Answered(resp, send) => {
                let status = resp.status();
                outlier::record_answer(cx.shared, pool, peer, status);
                if pool.is_guarded(status) {
                    stats.guard_outcome(GuardOutcome::Confirmed);
                    return client_response(resp, send, in_flight);
                }
                if !status.is_server_error() {
                    stats.guard_outcome(GuardOutcome::Contradicted);
                    outlier::record_contradiction(cx.shared, pool, &first_backend);
                    return client_response(resp, send, in_flight);
                }
                // A failing peer neither confirms nor contradicts: nobody is charged.
                None
            }
            Attempt::NotSent(back, err) => {
                connect_failed(cx.shared, pool, peer, &err, cx.request_id);
                Some(back)
            }
            Attempt::Failed(err) => {
                peer.answers.record(None);
                tracing::warn!(pool = %pool.name, backend = %peer.name, error = %err, request_id = ?cx.request_id, "second opinion failed");
                None
            }
        };
        exclude.push(peer.id);
        silent += 1;
        req = match back.or(copy) {
            Some(r) if silent <= pool.retries => r,
            _ => return unconfirmed(),
        };
        // Each further peer is one more replay: it comes out of the budget too.
        if !pool.budget.try_spend() {
            return no_budget();
        }
    }
}

fn buffered_response(mut parts: http::response::Parts, body: Bytes) -> Response<RespBody> {
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, RespBody::full(body))
}

/// A copy of a request whose body was kept in memory (cheap: the body is a shared `Bytes`).
fn clone_request(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let body = req.body().replayable()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Reads the client's body into memory when it fits `replay_limit` (so it can be replayed,
/// and a malformed chunked body is caught before anything is forwarded); larger bodies stream,
/// with what was already read sent first. Errors: 413 past `max_body`, 400 for a broken body.
async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    replay_limit: u64,
    max_body: u64,
) -> Result<ReqBody, StatusCode> {
    if http_body::Body::is_end_stream(&body) {
        return Ok(ReqBody::empty());
    }
    if content_length(headers).is_some_and(|len| len > replay_limit) {
        return Ok(ReqBody::stream(None, body, max_body));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
        // Request trailers are rare on push APIs and are not forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max_body {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        chunks.push(data);
        if total > replay_limit {
            return Ok(ReqBody::stream(Some(concat(chunks)), body, max_body));
        }
    }
    Ok(ReqBody::full(concat(chunks)))
}

/// Joins chunks; a single chunk (the usual case) is passed on without a copy.
fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut buf = bytes::BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    }
}

fn log_connect_failure(backend: &Backend, err: &ConnectError, request_id: &HeaderValue) {
    tracing::warn!(pool = %backend.pool, backend = %backend.name, error = %err, request_id = ?request_id, "upstream connect failed");
}

fn is_too_large(err: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(BodyError::TooLarge(_)) = e.downcast_ref::<BodyError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// 503 for a pool without a ready backend. Never falls back to an unready one.
fn no_ready_backend(pool: &Pool) -> Response<RespBody> {
    pool.stats.no_ready.fetch_add(1, Ordering::Relaxed);
    let mut resp = Response::new(RespBody::full(pool.unavailable_body.clone()));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    set_retry_after(pool, &mut resp);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// 503 with `Retry-After` for an answer syncgate will not pass on unconfirmed.
fn retry_later(pool: &Pool, message: &str, request_id: &HeaderValue) -> Response<RespBody> {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, message, request_id);
    set_retry_after(pool, &mut resp);
    resp
}

/// `Retry-After`: one probe interval, when the pool's state may have changed.
fn set_retry_after(pool: &Pool, resp: &mut Response<RespBody>) {
    let secs = pool.probe.interval.as_secs().max(1);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
}

/// Builds the upstream request in place from the client's: origin-form URI, HTTP/1.1,
/// hop-by-hop headers removed, forwarding headers set.
fn upstream_request(
    mut parts: http::request::Parts,
    body: ReqBody,
    conn: &ConnInfo,
) -> Request<ReqBody> {
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(h) = &original_host {
        headers.insert(header::HOST, h.clone());
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    append_forwarded_for(headers, &conn.peer_ip);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    parts.extensions = http::Extensions::new();
    Request::from_parts(parts, body)
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if values.peek().is_none() {
        // The common case: no allocation, the connection's rendered IP is shared.
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        return;
    }
    let mut s = Vec::new();
    for v in values {
        s.extend_from_slice(v.as_bytes());
        s.extend_from_slice(b", ");
    }
    s.extend_from_slice(peer_ip.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(s)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
}

fn client_response(
    resp: Response<Incoming>,
    send: upstream::Conn,
    in_flight: crate::backend::InFlight,
) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(
        parts,
        RespBody::Upstream(Pooled::new(body, send, in_flight)),
    )
}

/// The request's host, lower-cased and without port: the URI authority (HTTP/2, absolute
/// form) or the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            strip_port(h)
        }
    };
    // Host names almost always arrive lower-case already: allocate only when they do not.
    Some(if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h)
            .trim_start_matches('[');
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn hash_key(pool: &Pool, headers: &HeaderMap) -> Option<Vec<u8>> {
    if !matches!(pool.balancer, crate::balance::Balancer::Hash { .. }) {
        return None;
    }
    headers
        .get(&pool.hash_header)
        .map(|v| v.as_bytes().to_vec())
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (i, c) in id.iter_mut().enumerate() {
        *c = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

/// A JSON error answer generated by syncgate.
pub fn error(status: StatusCode, message: &str, request_id: &HeaderValue) -> Response<RespBody> {
    let body = serde_json::json!({
        "error": message,
        "status": status.as_u16(),
        "request_id": request_id.to_str().unwrap_or(""),
    });
    let mut resp = Response::new(RespBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let conn = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), false);
        append_forwarded_for(&mut h, &conn.peer_ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        append_forwarded_for(&mut h, &conn.peer_ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3, 1.1.1.1, 10.1.2.3");
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn host_parsing() {
        assert_eq!(strip_port("Push.Example.com:8080"), "Push.Example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        let req = Request::get("/x")
            .header(header::HOST, "PUSH.example.com:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("push.example.com"));
        let req = Request::get("http://a.example.com/x").body(()).unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("a.example.com"));
    }
}
