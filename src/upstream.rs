//! Upstream HTTP/1.1 connections to the workers, pooled per proxy thread.
//!
//! Each proxy thread runs its own single-threaded runtime, so the idle-connection pool is a
//! `thread_local!` map keyed by backend id: no lock, no cross-thread wake-up (DESIGN.md,
//! "Performance notes"). The `RefCell` is only ever borrowed synchronously, never across an
//! `.await`, so a future that did migrate threads would merely use the other thread's pool.
//!
//! A pooled connection is reused only under the TLS setup it was opened with (plain TCP, or
//! one CA and server name): a reload that changes a pool's `upstream_tls` never sends a
//! request over a connection that the new settings would not have made.
//!
//! Sending uses `try_send_request`, which hands the request back when it was not written to
//! the connection. That makes "reset before any byte was sent" a retryable connect failure
//! even for streamed bodies: the body is still untouched in the returned request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::backend::{Backend, InFlight};
use crate::body::ReqBody;

/// Idle connections older than this are closed: shorter than common worker keep-alive
/// timeouts (Go 90 s, nginx 75 s, Node 5 s is the outlier), so a pooled connection is rarely
/// closed by the worker under our feet, and connections to a removed backend close soon.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per backend per thread.
const MAX_IDLE_PER_BACKEND: usize = 128;
/// Connect timeout; the whole exchange is further bounded by `request_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

struct Idle {
    conn: Conn,
    since: Instant,
}

/// An upstream HTTP/1.1 connection and the transport it was opened with.
#[derive(Debug)]
pub struct Conn {
    send: SendRequest<ReqBody>,
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
    /// The HTTP/1.1 handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(hyper::Error),
    /// The connection closed before the request was written.
    #[error("connection reset before the request was sent: {0}")]
    NotSent(hyper::Error),
}

/// The outcome of one attempt on one backend.
pub enum Attempt {
    /// The worker answered (headers received).
    Answered(Response<Incoming>, Conn),
    /// Nothing reached the worker; the request comes back for a retry elsewhere.
    NotSent(Request<ReqBody>, ConnectError),
    /// The request was (at least partly) sent and then failed: not retryable.
    Failed(hyper::Error),
}

fn checkout(backend: &Backend, transport: u64) -> Option<SendRequest<ReqBody>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let entry = pool.get_mut(&backend.id)?;
        while let Some(idle) = entry.idle.pop() {
            // A connection of another transport (before a reload changed `upstream_tls`) is
            // dropped, and with it closed.
            if idle.conn.transport == transport
                && idle.since.elapsed() < IDLE_TIMEOUT
                && idle.conn.send.is_ready()
            {
                return Some(idle.conn.send);
            }
        }
        None
    })
}

fn checkin(backend: &Arc<Backend>, conn: Conn) {
    if backend.is_removed() || conn.send.is_closed() {
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
                since: Instant::now(),
            });
        }
    });
}

/// Closes idle connections that timed out or were closed by the worker, and all idle
/// connections of backends that left the config. Run every second on every proxy thread.
pub fn sweep() {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.retain(|_, entry| {
            if entry.backend.is_removed() {
                return false;
            }
            entry
                .idle
                .retain(|i| i.since.elapsed() < IDLE_TIMEOUT && !i.conn.send.is_closed());
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

/// Opens a new HTTP/1.1 connection to `backend` (over TLS with `tls`); used by the proxy and
/// the prober alike.
pub async fn open<B>(
    backend: &Backend,
    tls: Option<&UpstreamTls>,
) -> Result<SendRequest<B>, ConnectError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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
        None => handshake(stream).await,
        Some(tls) => {
            let name = tls
                .server_name
                .clone()
                .unwrap_or_else(|| ServerName::IpAddress(backend.addr.ip().into()));
            let connecting = tls.connector.connect(name, stream);
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Err(_) => Err(ConnectError::Timeout),
                Ok(Err(e)) => Err(ConnectError::Tls(e)),
                Ok(Ok(s)) => handshake(s).await,
            }
        }
    }
}

async fn handshake<I, B>(io: I) -> Result<SendRequest<B>, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    // The connection task ends when every `SendRequest` handle is dropped and the connection
    // is idle, or when the worker closes it.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(send)
}

/// Sends `req` to `backend` on a pooled connection, or a new one. A pooled connection that
/// turns out to be dead before the request was written is replaced by a fresh one once: the
/// worker is not at fault for an idle connection it closed.
pub async fn send(backend: &Backend, tls: Option<&UpstreamTls>, req: Request<ReqBody>) -> Attempt {
    let mut req = req;
    let transport = transport(tls);
    if let Some(mut send) = checkout(backend, transport) {
        match send.try_send_request(req).await {
            Ok(resp) => return Attempt::Answered(resp, Conn { send, transport }),
            Err(mut e) => match e.take_message() {
                Some(back) => req = back,
                None => return Attempt::Failed(e.into_error()),
            },
        }
    }
    // Boxed: a new connection is rare with pooling, and the connect/TLS future is large; kept
    // inline it would make every request's future (moved around by hyper) several KiB bigger.
    let mut send = match Box::pin(open(backend, tls)).await {
        Ok(s) => s,
        Err(e) => return Attempt::NotSent(req, e),
    };
    match send.try_send_request(req).await {
        Ok(resp) => Attempt::Answered(resp, Conn { send, transport }),
        Err(mut e) => match e.take_message() {
            Some(back) => Attempt::NotSent(back, ConnectError::NotSent(e.into_error())),
            None => Attempt::Failed(e.into_error()),
        },
    }
}

/// A worker's response body. Holds the request's in-flight count until it is finished, and
/// returns the connection to this thread's pool when the body was read to the end (a body
/// dropped half-read leaves the connection unusable, so it is closed instead).
#[derive(Debug)]
pub struct Pooled {
    inner: Incoming,
    conn: Option<Conn>,
    done: bool,
    in_flight: InFlight,
}

impl Pooled {
    /// Wraps a response body.
    pub fn new(inner: Incoming, conn: Conn, in_flight: InFlight) -> Pooled {
        Pooled {
            inner,
            conn: Some(conn),
            done: false,
            in_flight,
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.in_flight.backend().metrics.received(data.len());
                }
            }
            Poll::Ready(None) => this.done = true,
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if !(self.done || self.inner.is_end_stream()) {
            return;
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let backend = self.in_flight.backend().clone();
        if conn.send.is_ready() {
            checkin(&backend, conn);
        } else if !conn.send.is_closed() {
            // The connection task has not yet seen the end of the exchange; it will be ready
            // in a moment. Only then may it be reused.
            tokio::spawn(async move {
                if conn.send.ready().await.is_ok() {
                    checkin(&backend, conn);
                }
            });
        }
    }
}
