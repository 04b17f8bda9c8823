//! The hyper service: route → pick → forward → guard.
//!
//! One call per client request. It reads the current [`Snapshot`](crate::snapshot::Snapshot)
//! once, so a request runs to its end on the config it began with, whatever reloads happen
//! meanwhile. In the order a request meets them: [`serve`] names the request, routes it and
//! writes the head that goes upstream ([`headers`]); [`forward`] reads the body within its
//! limits and dispatches it through [`exchange`](mod@exchange) (connect retries, budget); a
//! guarded answer goes through [`guard`] (the second opinion); [`response`] writes what
//! syncgate answers itself.

mod credential;
mod exchange;
mod guard;
mod headers;
mod response;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::access_log::Entry;
use crate::balance::Balancer;
use crate::body::ReqBody;
use crate::clock;
use crate::conn::ConnInfo;
use crate::deadline;
use crate::memory::Fingerprint;
use crate::snapshot::{Pool, Shared};
use crate::upstream::{self, HeadWriter, Outgoing};
use exchange::{exchange, is_too_large, Phase, Tried, Unanswered};
use headers::{content_length, new_request_id, request_host, upstream_head, X_REQUEST_ID};
use response::{error, no_ready_backend, RespBody};

/// Serves one client request. Never fails: every problem becomes an HTTP answer.
///
/// What can be decided from the request head is decided here, before the returned future
/// exists: the route, the limits, the credential's fingerprint, the balancer's hash key, and
/// the head that goes upstream (encoded once; the client's header map is dropped then). The
/// future keeps only what the exchange needs, so that hyper moves a small future around.
/// `arrived` is when the server took the request (one clock reading for the request's
/// timeout, its latency and its access log line). `log` is the request's access log entry
/// ([`Entry::off`] while the log is off); it comes back with the response, or writes its
/// line when the future is dropped unfinished.
pub fn serve(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    req: Request<Incoming>,
    arrived: Instant,
    mut log: Entry,
) -> impl Future<Output = (Response<RespBody>, Entry)> + Send + 'static {
    let (mut parts, body) = req.into_parts();
    // The id travels upstream and back to the client, and names the request in our logs.
    let (request_id, generated) = match parts.headers.get(&X_REQUEST_ID) {
        Some(v) => (v.clone(), false),
        None => (new_request_id(), true),
    };
    let mut prepared = prepare(shared, conn, &parts, &request_id, generated, arrived, body);
    // Read for the last time: emptied, the map holds an answer's headers.
    upstream::recycle_headers(std::mem::take(&mut parts.headers));
    drop(parts);
    let shared = shared.clone();
    log.request_id(&request_id);
    async move {
        // The request's path borrows what this future holds: nothing on the way of every
        // request is moved into the futures it awaits (a by-value parameter of an async fn
        // is held twice, the parameter and its local, and the callee's copy beside the
        // caller's; every byte of it is allocated and copied per request). Only the rarer
        // steps take theirs by value: reading a body, the second opinion (boxed).
        let mut resp = match &mut prepared {
            Ok(prepared) => prepared.run(&shared, &request_id, &mut log).await,
            Err((status, why, _)) => error(*status, why, &request_id),
        };
        let unread = match &prepared {
            Ok(prepared) => prepared.req.unread,
            Err((_, _, unread)) => *unread,
        };
        if let Some(version) = unread {
            // Answered before the client's body was read to its end: the server closes the
            // connection after this answer (the rest is drained, not parsed), and says so,
            // or a client would send its next request on a connection about to close.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            if version == http::Version::HTTP_10 {
                // An HTTP/1.0 answer: hyper would otherwise add `keep-alive` for a client
                // that asked for it, and `close, keep-alive` reads as keep-alive to some.
                *resp.version_mut() = version;
            }
        }
        answer_request_id(&mut resp, request_id);
        (resp, log)
    }
}

/// The request's HTTP/1.x version when its body may be left unread by an early answer: it is
/// not known to be empty (no `Content-Length: 0`, not a request without a body). Read from
/// the body's size hint, which takes no lock. Over HTTP/2 a stream's unread body never
/// concerns the connection's next request.
fn may_stay_unread(parts: &Parts, body: &Incoming) -> Option<http::Version> {
    let http1 = parts.version < http::Version::HTTP_2;
    (http1 && http_body::Body::size_hint(body).exact() != Some(0)).then_some(parts.version)
}

/// Tells the client the request's id, marked sensitive: HPACK never indexes it. An id is
/// unique to its response, so indexing it only churned an HTTP/2 connection's header table:
/// each response's id was compared with every id still in the table, then inserted, evicting
/// the headers that do repeat (HTTP/2 clients, side by side: 0.963× CPU per request).
fn answer_request_id<B>(resp: &mut Response<B>, mut id: HeaderValue) {
    id.set_sensitive(true);
    resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
}

/// What a routed request takes into its exchange.
struct Prepared {
    pool: Arc<Pool>,
    req: Forwarding,
    /// The balancer's hash key (with `balance = "hash"`).
    hash_key: Option<Vec<u8>>,
    /// The fingerprint of the request's credential, when the pool keeps memories of them.
    credential: Option<Fingerprint>,
    limits: Limits,
}

/// Routes the request and checks what its head says; the status and reason of the local
/// answer when it goes no further, and whether the client's body is left unread
/// ([`Forwarding::unread`]).
fn prepare(
    shared: &Shared,
    conn: &ConnInfo,
    parts: &Parts,
    request_id: &HeaderValue,
    generated_id: bool,
    started: Instant,
    body: Incoming,
) -> Result<Prepared, (StatusCode, &'static str, Option<http::Version>)> {
    let unread = may_stay_unread(parts, &body);
    if parts.method == Method::CONNECT {
        // Tunnels are not proxied: a worker that opened one would take the next request on
        // its connection for tunnel bytes.
        shared
            .metrics
            .unrouted
            .record(StatusCode::METHOD_NOT_ALLOWED, started.elapsed());
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not proxied",
            unread,
        ));
    }
    let snapshot = shared.current();
    let routed = {
        let host = request_host(&parts.uri, &parts.headers);
        snapshot.route(host.as_deref().unwrap_or(""), parts.uri.path())
    };
    let Some(pool) = routed else {
        shared
            .metrics
            .unrouted
            .record(StatusCode::NOT_FOUND, started.elapsed());
        return Err((StatusCode::NOT_FOUND, "no route", unread));
    };
    let server = &snapshot.config.server;
    let content_length = content_length(&parts.headers);
    if content_length.is_some_and(|len| len > server.max_request_body) {
        pool.stats
            .record(StatusCode::PAYLOAD_TOO_LARGE, started.elapsed());
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            unread,
        ));
    }
    let limits = Limits {
        max_body: server.max_request_body,
        timeout: server.request_timeout,
        started,
    };
    let credential = credential::wanted(pool)
        .then(|| credential::fingerprint(&pool.guard.memory.credential, parts))
        .flatten();
    Ok(Prepared {
        req: Forwarding {
            head: upstream_head(parts, conn, generated_id.then_some(request_id)),
            head_request: parts.method == Method::HEAD,
            said_length: parts.headers.contains_key(header::CONTENT_LENGTH),
            content_length,
            unread,
            body: Some(body),
        },
        hash_key: hash_key(pool, &parts.headers),
        credential,
        pool: pool.clone(),
        limits,
    })
}

impl Prepared {
    /// Forwards the request within `request_timeout` (else `504`), and counts its answer.
    /// Called once: the request's head and body are taken from it.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn's future holds each parameter twice: its upvar and its local"
    )]
    fn run<'a>(
        &'a mut self,
        shared: &'a Shared,
        request_id: &'a HeaderValue,
        log: &'a mut Entry,
    ) -> impl Future<Output = Response<RespBody>> + 'a {
        async move {
            let Prepared {
                pool,
                req,
                hash_key,
                credential,
                limits,
            } = self;
            // Read through `cx` from here on: a name kept for them would be held in the
            // future besides.
            let cx = Cx {
                shared,
                pool,
                hash_key: hash_key.as_deref(),
                credential: *credential,
                request_id,
                limits,
                last_reading: LastReading::default(),
            };
            // Dropped unanswered when the client goes away: a client abort.
            let answering = cx.pool.stats.answering();
            let result = {
                let forwarding = std::pin::pin!(forward(&cx, req, log));
                deadline::within(cx.limits.deadline(), forwarding).await
            };
            let (pool, limits) = (cx.pool, cx.limits);
            answering.answered();
            let (resp, answered_at) = match result {
                Ok(resp) => (resp, cx.kept_reading()),
                Err(_) => {
                    // A guarded answer may have been taken before its second opinion ran late.
                    log.local_answer();
                    pool.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pool = %pool.name, request_id = request_id.to_str().unwrap_or(""), "upstream timeout");
                    let resp = error(StatusCode::GATEWAY_TIMEOUT, "upstream timeout", request_id);
                    // The attempt in progress was cut: nothing read the clock at its end.
                    (resp, None)
                }
            };
            let now = answered_at.unwrap_or_else(Instant::now);
            pool.stats
                .record(resp.status(), now.saturating_duration_since(limits.started));
            log.head_ready(now);
            resp
        }
    }
}

/// What every step of one request needs.
struct Cx<'a> {
    shared: &'a Shared,
    pool: &'a Pool,
    /// The balancer's hash key (with `balance = "hash"`).
    hash_key: Option<&'a [u8]>,
    /// The fingerprint of the request's credential, when the pool keeps memories of them.
    credential: Option<Fingerprint>,
    request_id: &'a HeaderValue,
    /// The request's arrival, body limit and `request_timeout`.
    limits: &'a Limits,
    /// The clock reading that ended the last attempt, while nothing that takes time happened
    /// since: when the answer is ready, without reading the clock again. Kept as nanoseconds
    /// after `limits.started`.
    last_reading: LastReading,
}

impl Cx<'_> {
    /// Keeps `at`, a reading that ended an attempt.
    fn keep_reading(&self, at: Instant) {
        self.last_reading.set(self.limits.started, at);
    }

    /// The reading kept last, unless cleared since.
    fn kept_reading(&self) -> Option<Instant> {
        self.last_reading.get(self.limits.started)
    }
}

/// A clock reading kept for later, or none, as nanoseconds after a base the caller gives (8
/// bytes in the request's future, not 24). An atomic, not a `Cell`: the request's future
/// holds `&Cx` across awaits and must be `Send`; only its own task touches it.
#[derive(Default)]
struct LastReading {
    /// 0: none.
    nanos: AtomicU64,
}

impl LastReading {
    fn set(&self, base: Instant, at: Instant) {
        let nanos = u64::try_from(at.saturating_duration_since(base).as_nanos());
        self.nanos
            .store(nanos.unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    fn clear(&self) {
        self.nanos.store(0, Ordering::Relaxed);
    }

    fn get(&self, base: Instant) -> Option<Instant> {
        match self.nanos.load(Ordering::Relaxed) {
            0 => None,
            n => base.checked_add(std::time::Duration::from_nanos(n)),
        }
    }
}

/// The request's arrival, its body limit and its `request_timeout`.
struct Limits {
    max_body: u64,
    /// `request_timeout`, which also bounds the wait between two reads of an answer's body.
    timeout: std::time::Duration,
    /// When the server took the request: its deadline, its latency and the kept readings
    /// count from it.
    started: Instant,
}

impl Limits {
    /// When `request_timeout` runs out.
    fn deadline(&self) -> tokio::time::Instant {
        clock::deadline(tokio::time::Instant::from_std(self.started), self.timeout)
    }
}

/// The request on its way: the upstream head, and the client's body not yet read.
struct Forwarding {
    /// The head that goes upstream, without its framing; taken when the request goes.
    head: HeadWriter,
    head_request: bool,
    said_length: bool,
    content_length: Option<u64>,
    /// The request's HTTP/1.x version while its body has not been read to its end (yet): its
    /// answer says `Connection: close`. Cleared once the body is known to be read whole.
    unread: Option<http::Version>,
    /// Taken when it is read, or dropped unread when it is empty.
    body: Option<Incoming>,
}

/// Forwards to a ready backend, retrying connect failures on other backends, and asks a
/// second opinion before a guarded answer (401/403) reaches the client.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's future holds each parameter twice: its upvar and its local"
)]
fn forward<'a>(
    cx: &'a Cx<'a>,
    req: &'a mut Forwarding,
    log: &'a mut Entry,
) -> impl Future<Output = Response<RespBody>> + 'a {
    async move {
        let pool = cx.pool;
        pool.budget.deposit();
        // A body is read only for a pool that could take it. A client that sent `Expect:
        // 100-continue` then gets its 503 without sending the body; one that did not is answered
        // while it uploads (the server drains the rest before it closes, see `server/io.rs`).
        // Asked once: over HTTP/2 each ask takes the connection's stream lock.
        let body = match req.body.take() {
            Some(body) if !http_body::Body::is_end_stream(&body) => {
                if !pool.backends.iter().any(|b| b.is_routable()) {
                    return no_ready_backend(pool);
                }
                match receive_body(cx, body, req.content_length, log).await {
                    Ok(body) => {
                        req.unread = req.unread.filter(|_| !body.client_finished());
                        body
                    }
                    Err(resp) => return resp,
                }
            }
            // Let go of the client's stream now, as a read body would, not after the exchange.
            _ => {
                req.unread = None;
                ReqBody::empty()
            }
        };
        let head = std::mem::take(&mut req.head);
        let mut outgoing = Outgoing::new(head, req.head_request, req.said_length, body);
        // Sent here, not in a function of its own: each level of the request's future costs
        // it its own references and padding (measured: 40 bytes).
        let mut tried = Tried::default();
        // The match ends before the second opinion is awaited, so that the exchange's result
        // is not kept in this future meanwhile (it would make every request's future larger).
        let (first, replay) = {
            let exchanged = exchange(cx, Phase::Forward, &mut outgoing, &mut tried, log).await;
            // A streamed body is read as it is sent: an answer may come before its end.
            req.unread = req.unread.filter(|_| !outgoing.client_body_finished());
            match exchanged {
                Ok(taken) => taken,
                Err(unanswered) => return unanswered_error(cx, unanswered, &tried),
            }
        };
        if !pool.is_guarded(first.status()) {
            if let Some(fp) = cx.credential.filter(|_| first.status().is_success()) {
                credential::accepted(pool, fp);
            }
            return first.into_response();
        }
        // Boxed: rare, and large enough to bloat every request's future.
        let (resp, outcome) = Box::pin(guard::second_opinion(cx, first, replay, tried, log)).await;
        pool.stats.guard_outcome(outcome);
        log.guard(outcome);
        resp
    }
}

/// The client's body (one that is not known to be empty) within the request's limits, or the
/// answer to a body that does not fit them.
async fn receive_body(
    cx: &Cx<'_>,
    body: Incoming,
    content_length: Option<u64>,
    log: &mut Entry,
) -> Result<ReqBody, Response<RespBody>> {
    let limits = cx.limits;
    let replay_limit = cx.pool.guard.max_replay_body;
    // Same deadline as the caller's 504, polled first: a body the client has not finished
    // sending by then is the client's delay (408, like nginx's client_body_timeout). Both
    // are swept alike (`deadline`); a body read that first waits after the deadline has
    // passed ends with the caller's 504 instead.
    let read = read_body(body, content_length, replay_limit, limits.max_body, log);
    match deadline::within(limits.deadline(), std::pin::pin!(read)).await {
        Ok(Ok(body)) => Ok(body),
        Err(_) => {
            // The rest of the body may still come: its answer says the connection closes
            // (`Forwarding::unread`).
            Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time",
                cx.request_id,
            ))
        }
        Ok(Err(status)) => {
            let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "request body too large"
            } else {
                "malformed request body"
            };
            Err(error(status, msg, cx.request_id))
        }
    }
}

/// syncgate's answer to a request that got no worker's answer.
fn unanswered_error(cx: &Cx<'_>, why: Unanswered, tried: &Tried) -> Response<RespBody> {
    let (pool, request_id) = (cx.pool, cx.request_id);
    match why {
        Unanswered::NoBackend if tried.failed() == 0 => no_ready_backend(pool),
        Unanswered::NoBackend => error(
            StatusCode::BAD_GATEWAY,
            "no backend could be reached",
            request_id,
        ),
        Unanswered::Exhausted => error(
            StatusCode::BAD_GATEWAY,
            "upstream connect failed",
            request_id,
        ),
        Unanswered::BudgetSpent => {
            pool.stats.retries_refused.fetch_add(1, Ordering::Relaxed);
            error(
                StatusCode::BAD_GATEWAY,
                "upstream connect failed (retry budget spent)",
                request_id,
            )
        }
        Unanswered::Broken(err) if is_too_large(&err) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            request_id,
        ),
        Unanswered::Broken(_) => error(
            StatusCode::BAD_GATEWAY,
            "upstream request failed",
            request_id,
        ),
    }
}

/// Reads the client's body into memory when it fits `replay_limit` (so it can be replayed,
/// and a malformed chunked body is caught before anything is forwarded); larger bodies stream,
/// with what was already read sent first. Errors: 413 past `max_body`, 400 for a broken body.
async fn read_body(
    mut body: Incoming,
    content_length: Option<u64>,
    replay_limit: u64,
    max_body: u64,
    log: &mut Entry,
) -> Result<ReqBody, StatusCode> {
    if content_length.is_some_and(|len| len > replay_limit) {
        return Ok(ReqBody::stream(None, body, max_body, log.body_streamed()));
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
        log.body_read(data.len());
        if total > max_body {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        chunks.push(data);
        if total > replay_limit {
            let streamed = log.body_streamed();
            return Ok(ReqBody::stream(
                Some(concat(chunks)),
                body,
                max_body,
                streamed,
            ));
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

/// The request's hash key, for a pool balanced by hash.
fn hash_key(pool: &Pool, headers: &HeaderMap) -> Option<Vec<u8>> {
    if !matches!(pool.balancer, Balancer::Hash { .. }) {
        return None;
    }
    headers
        .get(&pool.hash_header)
        .map(|v| v.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest block glibc's per-thread cache (tcache) keeps: a request future larger
    /// than this is allocated and freed through `malloc`'s slow path, per request (measured:
    /// about 1% of the CPU per request over HTTP/1.1, 4% over HTTP/2, where every stream's
    /// future is allocated anew).
    const TCACHE_MAX: usize = 1032;

    /// Built by a real hyper server (only hyper makes an `Incoming`), measured, and dropped
    /// unpolled. A debug build's future is measured, at least as large as a release build's
    /// (1,016 bytes against 1,000 with rustc 1.95).
    #[tokio::test]
    async fn a_request_future_fits_the_allocators_per_thread_cache() {
        use hyper_util::rt::TokioIo;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let text = "[[pools.push.backends]]\nname = \"w1\"\naddr = \"127.0.0.1:9\"\n";
        let shared = Shared::new(crate::config::Config::parse(text, None).expect("valid"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (size_tx, mut size_rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.expect("accept");
            let conn = ConnInfo::new(peer, false);
            let service = hyper::service::service_fn(move |req| {
                let future = serve(&shared, &conn, req, Instant::now(), Entry::off());
                let _ = size_tx.send((
                    std::mem::size_of_val(&future),
                    std::mem::align_of_val(&future),
                ));
                async {
                    Ok::<_, std::convert::Infallible>(Response::new(
                        http_body_util::Empty::<Bytes>::new(),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read");
        let (size, align) = size_rx
            .recv()
            .await
            .expect("the service was called with the request");
        // Rust's system allocator calls plain `malloc` (and so reaches the cache) only up to
        // this alignment.
        assert!(
            align <= 16,
            "the request's future is aligned to {align} bytes"
        );
        assert!(
            size <= TCACHE_MAX,
            "the request's future is {size} bytes, more than the {TCACHE_MAX} glibc's \
             per-thread cache keeps"
        );
        server.await.expect("server");
    }

    #[test]
    fn a_kept_reading_is_given_back_until_cleared() {
        let base = Instant::now();
        let kept = LastReading::default();
        assert_eq!(kept.get(base), None);
        let at = base + std::time::Duration::from_micros(1234);
        kept.set(base, at);
        assert_eq!(kept.get(base), Some(at));
        // A reading taken at the base itself is one, not none.
        kept.set(base, base);
        assert!(kept.get(base).is_some_and(|t| t >= base));
        kept.clear();
        assert_eq!(kept.get(base), None);
    }

    #[test]
    fn the_request_id_answered_is_never_indexed_by_hpack() {
        let mut resp = Response::new(());
        let id = headers::new_request_id();
        answer_request_id(&mut resp, id.clone());
        let answered = resp.headers().get(&X_REQUEST_ID).expect("an id");
        assert_eq!(answered, &id);
        assert!(
            answered.is_sensitive(),
            "h2 encodes a sensitive value never indexed"
        );
    }
}
