//! Client listeners: one single-threaded runtime per proxy thread, each with its own
//! `SO_REUSEPORT` socket per listen address, its own upstream connection pool, and graceful
//! shutdown with a deadline. `connection.rs` serves one client connection (timeouts, idleness,
//! parking an idle HTTP/1.1 connection, graceful close) and `served.rs` steers hyper's
//! connection in it (HTTP/2 served until it ends, HTTP/1.1 served or parked), `preface.rs`
//! tells HTTP/1.1 from HTTP/2 (and answers a bad HTTP/2 preface), `io.rs` is the socket as
//! hyper sees it (head tracking, bytes given back for a parked connection, lingering close).
//!
//! Why per-thread runtimes: a shared pool and cross-thread wake-ups cost more CPU per request
//! than the proxying itself (DESIGN.md, "Performance notes"). With `SO_REUSEPORT` the kernel
//! spreads connections across the threads, and a connection never leaves its thread.
//!
//! `max_connections` is one semaphore for all threads. At the limit a new connection is still
//! accepted, and the connection idle longest (of any thread) is asked to close gracefully to
//! make room, as nginx does with idle keep-alive connections (a connection that has not sent
//! a request yet only after a second of silence); only when none is idle does the new
//! connection wait for a slot (and the clients behind it in the kernel's backlog).

mod connection;
mod io;
mod preface;
mod served;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log;
use crate::config::ServerConfig;
use crate::conn::Registry;
use crate::deadline;
use crate::snapshot::Shared;
use crate::upstream;
use connection::{serve_client, ConnCx, Limits};

/// Largest request head accepted; larger heads are answered 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// [`MAX_HEAD_BYTES`] as HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE` takes it (checked to fit).
const MAX_HEAD_BYTES_H2: u32 = {
    assert!(MAX_HEAD_BYTES <= u32::MAX as usize);
    MAX_HEAD_BYTES as u32
};

/// Errors starting the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Another process already listens on an address (and `--takeover` was not given).
    #[error(
        "{addr} is already in use by another process; to start beside a running syncgate on \
         the same addresses (a restart or an upgrade), use --takeover"
    )]
    InUse { addr: SocketAddr },
    /// A proxy thread could not be started.
    #[error("cannot start proxy thread: {0}")]
    Thread(std::io::Error),
}

/// Running proxy threads.
#[derive(Debug)]
pub struct ProxyThreads {
    /// The bound plain addresses, in config order (ports resolved when the config said 0).
    pub addrs: Vec<SocketAddr>,
    /// The bound TLS addresses, in config order.
    pub tls_addrs: Vec<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ProxyThreads {
    /// Waits until every proxy thread has finished its graceful shutdown.
    pub async fn join(self) {
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// How the listeners are bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Bind {
    /// Refuse an address another process already listens on (`SO_REUSEPORT` would otherwise
    /// silently share it, as a second instance started by mistake would).
    #[default]
    Exclusive,
    /// Share the addresses with a running syncgate (`--takeover`): the old instance keeps
    /// serving until it is stopped, and the kernel spreads new connections over both.
    Takeover,
}

/// Fails when another process listens on `addr`: a socket without `SO_REUSEPORT` cannot bind
/// an address that a listening socket holds (`SO_REUSEADDR` only lets it past connections in
/// `TIME_WAIT`). Port 0 asks for a fresh port and needs no check.
fn ensure_free(addr: SocketAddr) -> Result<(), ServerError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = || -> std::io::Result<()> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    };
    match probe() {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ServerError::InUse { addr }),
        Err(source) => Err(ServerError::Bind { addr, source }),
        Ok(()) => Ok(()),
    }
}

/// A socket bound to `addr` with `SO_REUSEPORT` (one per proxy thread, and a successor
/// started with `--takeover` joins them), not yet listening: a socket that does not listen gets
/// no connection, so a successor can bind early and listen once it is ready.
fn reuseport_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Binds `threads` sockets per address (after [`ensure_free`] unless taking over). The first
/// socket of an address resolves port 0; the others bind the port it got.
fn bind_all(
    addrs: &[SocketAddr],
    threads: usize,
    mode: Bind,
) -> Result<(Vec<SocketAddr>, Vec<Vec<Socket>>), ServerError> {
    let mut bound = Vec::new();
    let mut per_thread: Vec<Vec<Socket>> = (0..threads).map(|_| Vec::new()).collect();
    for &addr in addrs {
        if mode == Bind::Exclusive {
            ensure_free(addr)?;
        }
        let err = |source| ServerError::Bind { addr, source };
        let first = reuseport_socket(addr).map_err(err)?;
        let actual = first
            .local_addr()
            .map_err(err)?
            .as_socket()
            .ok_or_else(|| err(std::io::ErrorKind::InvalidData.into()))?;
        bound.push(actual);
        per_thread[0].push(first);
        for sockets in per_thread.iter_mut().skip(1) {
            sockets.push(reuseport_socket(actual).map_err(err)?);
        }
    }
    Ok((bound, per_thread))
}

/// Binds the admin listener as the proxy listeners are bound (`SO_REUSEPORT`, so that a
/// successor started with `--takeover` can bind it too), and listens at once.
pub fn bind_admin(addr: SocketAddr, mode: Bind) -> Result<std::net::TcpListener, ServerError> {
    if mode == Bind::Exclusive {
        ensure_free(addr)?;
    }
    let socket = reuseport_socket(addr).map_err(|source| ServerError::Bind { addr, source })?;
    socket
        .listen(BACKLOG)
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(socket.into())
}

/// The kernel's accept queue per listener socket.
const BACKLOG: i32 = 1024;

/// A listener socket of one proxy thread, plain or TLS.
type ThreadListener = (Socket, Option<TlsAcceptor>);

/// The proxy's listener sockets, bound and not yet listening: [`Bound::start`] listens and
/// starts the proxy threads.
#[derive(Debug)]
pub struct Bound {
    /// The bound plain addresses, in config order (ports resolved when the config said 0).
    pub addrs: Vec<SocketAddr>,
    /// The bound TLS addresses, in config order.
    pub tls_addrs: Vec<SocketAddr>,
    plain: Vec<Vec<Socket>>,
    secure: Vec<Vec<Socket>>,
}

/// Binds the listeners of `cfg` (plain, and TLS when configured): `threads` sockets per
/// address, not yet listening.
pub fn bind(cfg: &ServerConfig, mode: Bind) -> Result<Bound, ServerError> {
    let threads = match cfg.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (addrs, plain) = bind_all(&cfg.listen, threads, mode)?;
    let (tls_addrs, secure) = match &cfg.tls {
        Some(t) => bind_all(&t.listen, threads, mode)?,
        None => (Vec::new(), (0..threads).map(|_| Vec::new()).collect()),
    };
    Ok(Bound {
        addrs,
        tls_addrs,
        plain,
        secure,
    })
}

impl Bound {
    /// Listens on every socket and starts the proxy threads (TLS sockets with `tls`). They stop
    /// accepting when `token` is cancelled, then give in-flight requests `drain_timeout` to
    /// finish.
    pub fn start(
        self,
        cfg: &ServerConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        shared: Arc<Shared>,
        token: CancellationToken,
    ) -> Result<ProxyThreads, ServerError> {
        let acceptor = tls.map(TlsAcceptor::from);
        let mut per_thread: Vec<Vec<ThreadListener>> = Vec::new();
        for (plain, secure) in self.plain.into_iter().zip(self.secure) {
            let plain = plain.into_iter().map(|s| (s, None));
            let secure = secure.into_iter().map(|s| (s, acceptor.clone()));
            per_thread.push(plain.chain(secure).collect());
        }
        for (socket, _) in per_thread.iter().flatten() {
            socket.listen(BACKLOG).map_err(|source| ServerError::Bind {
                addr: socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            })?;
        }
        spawn_threads(cfg, per_thread, self.addrs, self.tls_addrs, shared, token)
    }
}

/// Starts one proxy thread per element of `per_thread`, serving its listening sockets.
fn spawn_threads(
    cfg: &ServerConfig,
    per_thread: Vec<Vec<ThreadListener>>,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    token: CancellationToken,
) -> Result<ProxyThreads, ServerError> {
    // Validation keeps max_connections far below the semaphore's limit; clamped all the same,
    // as `Semaphore::new` panics beyond it.
    let limit = Arc::new(Semaphore::new(
        cfg.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let registry = Arc::new(Registry::default());
    let stop = Stop::new(token, per_thread.iter().map(Vec::len).sum());
    let mut handles = Vec::new();
    for (i, listeners) in per_thread.into_iter().enumerate() {
        let shared = shared.clone();
        let stop = stop.clone();
        let limit = limit.clone();
        let registry = registry.clone();
        let handle = std::thread::Builder::new()
            .name(format!("syncgate-proxy-{i}"))
            .spawn(move || {
                // This thread's access log lines are handed over when the guard drops: after
                // the runtime, whose connections cut at the drain deadline write lines too.
                let _access_log = shared.access_log.bind_thread();
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build proxy runtime");
                        return;
                    }
                };
                rt.block_on(thread_main(listeners, shared, stop, limit, registry));
                // Dropping the runtime cancels whatever outlived the drain deadline.
            })
            .map_err(ServerError::Thread)?;
        handles.push(handle);
    }
    Ok(ProxyThreads {
        addrs,
        tls_addrs,
        threads: handles,
    })
}

/// Shutdown in two steps. `accept` (the caller's token) stops the accept loops; once every
/// listener socket of every thread is closed, `drain` tells the connections to close
/// gracefully. In that order, a client that reconnects after its last `Connection: close`
/// answer can no longer land in the accept queue of a socket about to close (which would
/// reset it): it reaches whichever instance still listens.
#[derive(Clone)]
struct Stop {
    accept: CancellationToken,
    drain: CancellationToken,
    /// Set just before `drain` is cancelled: what a response reads to know it is its
    /// connection's last (an atomic load; the token's own check takes its lock).
    draining: Arc<std::sync::atomic::AtomicBool>,
    open_listeners: Arc<std::sync::atomic::AtomicUsize>,
}

impl Stop {
    fn new(accept: CancellationToken, listeners: usize) -> Stop {
        let drain = CancellationToken::new();
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(listeners == 0));
        if listeners == 0 {
            drain.cancel();
        }
        Stop {
            accept,
            drain,
            draining,
            open_listeners: Arc::new(std::sync::atomic::AtomicUsize::new(listeners)),
        }
    }

    /// One listener socket is closed (or never opened); the last one starts the drain.
    fn listener_closed(&self) {
        use std::sync::atomic::Ordering;
        if self.open_listeners.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.draining.store(true, Ordering::Release);
            self.drain.cancel();
        }
    }
}

async fn thread_main(
    listeners: Vec<ThreadListener>,
    shared: Arc<Shared>,
    stop: Stop,
    limit: Arc<Semaphore>,
    registry: Arc<Registry>,
) {
    let sweeper = {
        let token = stop.drain.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => upstream::sweep(),
                }
            }
        })
    };
    // Lines wait in this thread's batch at most this long.
    let flusher = every(access_log::FLUSH_EVERY, access_log::flush_thread);
    // This thread's request deadlines, until its last request ends (the drain included).
    deadline::bind_thread();
    let deadlines = every(deadline::TICK, deadline::sweep);
    let mut loops = Vec::new();
    for (l, acceptor) in listeners {
        let listener = match TcpListener::from_std(l.into()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register listener");
                stop.listener_closed();
                continue;
            }
        };
        let cx = ConnCx {
            shared: shared.clone(),
            http1: Arc::new(http1_builder()),
            http2: Arc::new(http2_builder()),
            token: stop.drain.clone(),
            draining: stop.draining.clone(),
            registry: registry.clone(),
        };
        loops.push(tokio::spawn(accept_loop(
            listener,
            acceptor,
            cx,
            limit.clone(),
            stop.clone(),
        )));
    }
    for l in loops {
        let _ = l.await;
    }
    let _ = sweeper.await;
    flusher.abort();
    deadlines.abort();
    // Nothing refreshes this thread's coarse clock any more.
    crate::clock::set_coarse(None);
}

/// Runs `f` on this thread every `period` until the returned task is aborted (ticks a busy
/// thread missed are not made up in a burst).
fn every(period: Duration, f: fn()) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            f();
        }
    })
}

/// hyper's HTTP/1.1 settings: no header timer (see `connection.rs`: syncgate enforces
/// `header_read_timeout` itself), heads up to [`MAX_HEAD_BYTES`].
fn http1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES);
    b
}

/// hyper's HTTP/2 settings: header lists up to [`MAX_HEAD_BYTES`], as over HTTP/1.1 (hyper's
/// default is 16 KiB); a larger one is answered `431`.
fn http2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES_H2)
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    cx: ConnCx,
    limit: Arc<Semaphore>,
    stop: Stop,
) {
    // Every connection task, so that shutdown can wait for them (up to `drain_timeout`).
    let connections = TaskTracker::new();
    let mut closing = false;
    loop {
        let accepted = if closing {
            // Stopping: what the kernel completed before now is still taken and served (it
            // would be reset with the socket otherwise); then the socket closes.
            match std::future::poll_fn(|c| std::task::Poll::Ready(listener.poll_accept(c))).await {
                std::task::Poll::Ready(Ok(x)) => Some(x),
                _ => None,
            }
        } else {
            tokio::select! {
                _ = stop.accept.cancelled() => {
                    closing = true;
                    continue;
                }
                r = listener.accept() => match r {
                    Ok(x) => Some(x),
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            }
        };
        let Some((stream, peer)) = accepted else {
            break;
        };
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            // Stopping at the limit: waiting for a slot would wait for the drain, which
            // begins only once this socket is closed.
            Err(TryAcquireError::NoPermits) if closing => break,
            Err(TryAcquireError::NoPermits) => {
                // At max_connections: make room by closing the connection idle longest, then
                // wait for its slot (if none is idle, for any; the kernel's backlog holds the
                // clients behind this one meanwhile).
                if !cx.registry.reclaim_idlest(crate::clock::now_millis()) {
                    tracing::debug!("max_connections reached and no connection is idle");
                }
                tokio::select! {
                    _ = stop.accept.cancelled() => break,
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                }
            }
        };
        // Read from the running config for each connection: a reload applies to the
        // connections accepted after it.
        let limits = {
            let snapshot = cx.shared.current();
            let server = &snapshot.config.server;
            Limits {
                header: server.header_read_timeout,
                idle: server.idle_timeout,
                linger_bytes: server.max_request_body.saturating_add(io::LINGER_SLACK),
            }
        };
        let _ = stream.set_nodelay(true);
        let (cx, acceptor) = (cx.clone(), acceptor.clone());
        connections.spawn(async move {
            let _permit = permit;
            serve_client(stream, peer, acceptor, cx, limits).await;
        });
    }
    drop(listener);
    stop.listener_closed();
    // The running config's value: a reload may have changed it since start.
    let drain = cx.shared.snapshot().config.server.drain_timeout;
    // Once every listener is closed the connections close gracefully (see `Stop`).
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?drain, "drain timeout reached; closing remaining connections");
    }
}
