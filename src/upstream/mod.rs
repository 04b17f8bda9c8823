//! Upstream HTTP/1.1 connections to the workers, pooled per proxy thread, driven in the
//! request's own task.
//!
//! Each proxy thread runs its own single-threaded runtime, so the idle-connection pool is a
//! `thread_local!` map keyed by backend id: no lock, no cross-thread wake-up (DESIGN.md,
//! "Performance notes"). The `RefCell` is only ever borrowed synchronously, never across an
//! `.await`, so a future that did migrate threads would merely use the other thread's pool.
//!
//! A request writes itself to the connection and reads its answer in its own task
//! (`conn.rs`, with the protocol in `codec.rs`): no connection task, no channel between the
//! two, no wake-up of another task per request. The answer body ([`Pooled`]) reads from the
//! connection as the client takes it, and puts the connection back in the pool the moment the
//! body is complete.
//!
//! A pooled connection is reused only under the TLS setup it was opened with (plain TCP, or
//! one CA and server name): a reload that changes a pool's `upstream_tls` never sends a
//! request over a connection that the new settings would not have made.
//!
//! The request is lent to [`send`], not given: one that could not be written at all
//! ([`Attempt::NotSent`]) is still the caller's, untouched, so a connection reset before any
//! byte was sent is a retryable connect failure even for streamed bodies. Lent, too, because
//! each level of the request's future that took it by value held a copy of its own.

mod codec;
mod conn;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::backend::{Backend, InFlight};
use crate::body::ReqBody;
use codec::RequestHead;
pub use codec::{recycle_headers, HeadWriter, ReqFraming};
pub use conn::UpstreamError;
use conn::{Conn, Decoder, Failed, Stream};

/// Idle connections older than this are closed: shorter than common worker keep-alive
/// timeouts (Go 90 s, nginx 75 s, Node 5 s is the outlier), so a pooled connection is rarely
/// closed by the worker under our feet, and connections to a removed backend close soon.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per backend per thread.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// Connect timeout; the whole exchange is further bounded by `request_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Idle {
    conn: Tagged,
    /// When it was checked in, by the coarse clock ([`crate::clock::coarse`]): never later
    /// than the real time, so that an age measured against a real reading is never short.
    since: Instant,
}

/// An upstream connection and the transport it was opened with.
#[derive(Debug)]
struct Tagged {
    conn: Conn,
    /// 0: plain TCP; otherwise the pool's [`UpstreamTls::fingerprint`] at connect time.
    transport: u64,
}

/// The transport tag of a pool's TLS setting.
fn transport(tls: Option<&UpstreamTls>) -> u64 {
    tls.map_or(0, |t| t.fingerprint)
}

struct Entry {
    backend: Arc<Backend>,
    idle: Vec<Idle>,
}

thread_local! {
    static POOL: RefCell<HashMap<u64, Entry>> = RefCell::new(HashMap::new());
}

/// Why no request could be written to a backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The worker refused the connection.
    #[error("connect refused")]
    Refused,
    /// The connection did not complete within the connect timeout.
    #[error("connect timeout")]
    Timeout,
    /// Any other socket error while connecting.
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake with the worker failed.
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The connection failed before a byte of the request was written.
    #[error("connection reset before the request was sent: {0}")]
    NotSent(std::io::Error),
}

/// A request as it goes to a worker: its head, encoded once (a retry or a replay sends the same
/// bytes), and its body.
#[derive(Debug)]
pub struct Outgoing {
    head: RequestHead,
    framing: ReqFraming,
    /// A `HEAD` request: the answer has no body whatever its head says.
    head_request: bool,
    body: ReqBody,
}

impl Outgoing {
    /// The request `head` (without framing) with `body`; `said_length`: the client sent a
    /// `Content-Length` (kept as `0` for an empty body).
    pub fn new(head: HeadWriter, head_request: bool, said_length: bool, body: ReqBody) -> Outgoing {
        let framing = if http_body::Body::is_end_stream(&body) {
            ReqFraming::Empty { said_length }
        } else {
            match &body {
                ReqBody::Full(b) => ReqFraming::Length(b.as_ref().map_or(0, |b| b.len() as u64)),
                ReqBody::Stream(_) => match http_body::Body::size_hint(&body).exact() {
                    Some(n) => ReqFraming::Length(n),
                    None => ReqFraming::Chunked,
                },
            }
        };
        Outgoing {
            head: head.finish(framing),
            framing,
            head_request,
            body,
        }
    }

    /// The body's length when known before it is sent (kept in memory, or a
    /// `Content-Length`); else what is known to come at least.
    pub fn body_len(&self) -> u64 {
        http_body::Body::size_hint(&self.body).lower()
    }

    /// Whether the client's body has been read to its end ([`ReqBody::client_finished`]).
    pub fn client_body_finished(&self) -> bool {
        self.body.client_finished()
    }

    /// A copy to send again, when the body was kept in memory (the head copied into a pooled
    /// buffer, the body's bytes shared).
    pub fn replayable(&self) -> Option<Outgoing> {
        let body = self.body.replayable()?;
        Some(Outgoing {
            head: self.head.copy(),
            framing: self.framing,
            head_request: self.head_request,
            body,
        })
    }
}

/// The outcome of one attempt on one backend.
pub enum Attempt {
    /// The worker answered (headers received); the body reads from the connection.
    Answered(Response<Answer>),
    /// Nothing reached the worker; the request is untouched, for a retry elsewhere.
    NotSent(ConnectError),
    /// The request was (at least partly) sent and then failed: not retryable.
    Failed(UpstreamError),
}

/// A worker's answer body, not yet read, on its connection.
#[derive(Debug)]
pub struct Answer {
    conn: Tagged,
    decoder: Decoder,
    keep_alive: bool,
}

impl Answer {
    /// Whether the body is known to be empty.
    pub fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }
}

/// An idle connection to `backend` younger than [`IDLE_TIMEOUT`] at `now` (a real reading: an
/// age from the coarse clock could be short by as long as a busy thread went without its
/// sweep, and the timeout's margin below the workers' own is a second).
fn checkout(backend: &Backend, transport: u64, now: Instant) -> Option<Tagged> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let entry = pool.get_mut(&backend.id)?;
        while let Some(mut idle) = entry.idle.pop() {
            // A connection of another transport (before a reload changed `upstream_tls`) is
            // dropped, and with it closed; so is one the worker closed or wrote to unasked.
            if idle.conn.transport == transport
                && now.saturating_duration_since(idle.since) < IDLE_TIMEOUT
                && idle.conn.conn.is_usable()
            {
                return Some(idle.conn);
            }
        }
        None
    })
}

fn checkin(backend: &Arc<Backend>, conn: Tagged) {
    if backend.is_removed() {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let entry = pool.entry(backend.id).or_insert_with(|| Entry {
            backend: backend.clone(),
            idle: Vec::new(),
        });
        if entry.idle.len() < MAX_IDLE_PER_BACKEND {
            entry.idle.push(Idle {
                conn,
                since: crate::clock::coarse(),
            });
        }
    });
}

/// Closes idle connections that timed out or were closed by the worker, and all idle
/// connections of backends that left the config. Run every second on every proxy thread.
pub fn sweep() {
    let now = Instant::now();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.retain(|_, entry| {
            if entry.backend.is_removed() {
                return false;
            }
            entry.idle.retain_mut(|i| {
                now.saturating_duration_since(i.since) < IDLE_TIMEOUT && i.conn.conn.is_usable()
            });
            !entry.idle.is_empty()
        });
    });
}

/// TLS to the workers of a pool.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Connector trusting the pool's CA.
    pub connector: tokio_rustls::TlsConnector,
    /// SNI and verified name; None: the backend's IP address.
    pub server_name: Option<ServerName<'static>>,
    /// Identity of the CA and server name, tagging the connections opened with them.
    pub fingerprint: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// From a validated `[pools.X.upstream_tls]`.
    pub fn new(cfg: &crate::config::UpstreamTlsConfig) -> UpstreamTls {
        UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(cfg.client.clone()),
            // Validated as a DNS name or an IP address.
            server_name: cfg
                .server_name
                .as_ref()
                .and_then(|n| ServerName::try_from(n.clone()).ok()),
            fingerprint: cfg.fingerprint,
        }
    }
}

/// Opens a new HTTP/1.1 connection to `backend` (over TLS with `tls`).
async fn open(backend: &Backend, tls: Option<&UpstreamTls>) -> Result<Conn, ConnectError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr)).await
    {
        Err(_) => return Err(ConnectError::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused)
        }
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Conn::new(Stream::Plain(stream))),
        Some(tls) => {
            let name = tls
                .server_name
                .clone()
                .unwrap_or_else(|| ServerName::IpAddress(backend.addr.ip().into()));
            let connecting = tls.connector.connect(name, stream);
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Err(_) => Err(ConnectError::Timeout),
                Ok(Err(e)) => Err(ConnectError::Tls(e)),
                Ok(Ok(s)) => Ok(Conn::new(Stream::Tls(Box::new(s)))),
            }
        }
    }
}

/// Sends `req` to `backend` on a pooled connection, or a new one; `now` is a reading of the
/// clock taken just before (the caller's, for the upstream latency). A pooled connection that
/// turns out to be dead before the request was written is replaced by a fresh one once: the
/// worker is not at fault for an idle connection it closed. `req` stays the caller's: after
/// [`Attempt::NotSent`] it is untouched, after the others its body has been (partly) read.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's future holds each parameter twice: its upvar and its local"
)]
pub fn send<'a>(
    backend: &'a Backend,
    tls: Option<&'a UpstreamTls>,
    req: &'a mut Outgoing,
    now: Instant,
) -> impl Future<Output = Attempt> + 'a {
    async move {
        let transport = transport(tls);
        let mut fresh = false;
        let mut conn = match checkout(backend, transport, now) {
            Some(conn) => conn,
            None => {
                fresh = true;
                match connect(backend, tls, transport).await {
                    Ok(conn) => conn,
                    Err(e) => return Attempt::NotSent(e),
                }
            }
        };
        loop {
            let unsent = match conn.conn.exchange(req).await {
                Ok(head) => return Attempt::Answered(answer(conn, head)),
                Err(Failed::NotSent(e)) => e,
                Err(Failed::Broken(e)) => return Attempt::Failed(e),
            };
            if fresh {
                return Attempt::NotSent(ConnectError::NotSent(unsent));
            }
            // Closed before the new one is opened, not held while it connects.
            drop(conn);
            conn = match connect(backend, tls, transport).await {
                Ok(conn) => conn,
                Err(e) => return Attempt::NotSent(e),
            };
            fresh = true;
        }
    }
}

/// A new connection to `backend`. Boxed: a new connection is rare with pooling, and the
/// connect/TLS future is large; kept inline it would make every request's future (moved
/// around by hyper) several KiB bigger.
async fn connect(
    backend: &Backend,
    tls: Option<&UpstreamTls>,
    transport: u64,
) -> Result<Tagged, ConnectError> {
    let conn = Box::pin(open(backend, tls)).await?;
    Ok(Tagged { conn, transport })
}

/// The answer whose `head` was read on `conn`, its body still on the connection.
fn answer(conn: Tagged, head: codec::Head) -> Response<Answer> {
    let mut resp = Response::new(Answer {
        conn,
        decoder: Decoder::new(head.framing),
        keep_alive: head.keep_alive,
    });
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    resp
}

/// Sends `req` over a new connection to `backend` and reads the answer whole (at most `limit`
/// bytes of body); the connection closes after it. For probes: a dead worker must show up as
/// `connect refused`, not hide behind a pooled connection.
pub async fn fetch(
    backend: &Backend,
    tls: Option<&UpstreamTls>,
    mut req: Outgoing,
    limit: usize,
) -> Result<(http::StatusCode, Bytes), String> {
    let mut conn = open(backend, tls).await.map_err(|e| e.to_string())?;
    let head = match conn.exchange(&mut req).await {
        Ok(head) => head,
        Err(Failed::NotSent(e)) => return Err(format!("probe failed: {e}")),
        Err(Failed::Broken(e)) => return Err(format!("probe failed: {e}")),
    };
    let body = conn::read_to_end(&mut conn, Decoder::new(head.framing), limit)
        .await
        .map_err(|e| format!("probe body failed: {e}"))?;
    Ok((head.status, body))
}

/// A worker's response body. Holds the request's in-flight count until it is finished, and
/// returns the connection to this thread's pool the moment the body is complete (a body
/// dropped half-read leaves the connection unusable, so it is closed instead).
#[derive(Debug)]
pub struct Pooled {
    answer: Option<Answer>,
    /// Read to its end (the connection went back to the pool, or closed).
    done: bool,
    in_flight: InFlight,
    /// The longest wait between two reads (`request_timeout`, like nginx's
    /// `proxy_read_timeout`): a worker that stops sending mid-body does not hold the client's
    /// response, and its connection, for ever.
    timeout: Duration,
    /// Armed at the first read that has to wait, re-armed after each read that gave data.
    /// Boxed and made only then: a body that arrives with its head (the usual small answer)
    /// costs no timer.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Data came since the timer was armed.
    rearm: bool,
}

impl Pooled {
    /// Wraps an answer's body, to be read with at most `timeout` between two reads; an empty
    /// one gives its connection back at once.
    pub fn new(answer: Answer, in_flight: InFlight, timeout: Duration) -> Pooled {
        let mut pooled = Pooled {
            answer: Some(answer),
            done: false,
            in_flight,
            timeout,
            stall: None,
            rearm: false,
        };
        if pooled.answer.as_ref().is_some_and(Answer::is_end_stream) {
            pooled.finish();
        }
        pooled
    }

    /// A read has to wait: pending until the timer runs out, then the body fails (its
    /// connection, out of step, is closed).
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let timeout = self.timeout;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if std::mem::take(&mut self.rearm) {
            stall
                .as_mut()
                .reset(crate::clock::deadline(tokio::time::Instant::now(), timeout));
        }
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let backend = self.in_flight.backend();
        tracing::warn!(pool = %backend.pool, backend = %backend.name, timeout = ?timeout, "answer body stalled; the response is cut");
        self.answer = None;
        self.done = true;
        Poll::Ready(Some(Err(UpstreamError::Stalled(timeout))))
    }

    /// The body is complete: its connection goes back to the pool when it may carry another
    /// request.
    fn finish(&mut self) {
        self.done = true;
        if let Some(answer) = self.answer.take() {
            if answer.keep_alive {
                checkin(self.in_flight.backend(), answer.conn);
            }
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let Some(answer) = this.answer.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = answer.decoder.poll_data(&mut answer.conn.conn, cx);
        match polled {
            Poll::Ready(Some(Ok(data))) => {
                this.rearm = true;
                this.in_flight.backend().metrics.received(data.len());
                if answer.decoder.is_done() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is out of step: closed, not pooled.
                this.answer = None;
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => this.wait(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.answer.as_ref().and_then(|a| a.decoder.exact()) {
            Some(n) => SizeHint::with_exact(n),
            None if self.done => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}
