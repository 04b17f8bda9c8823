//! Client listeners: one single-threaded runtime per proxy thread, each with its own
//! `SO_REUSEPORT` socket per listen address, its own upstream connection pool, and graceful
//! shutdown with a deadline. `connection.rs` serves one client connection (timeouts, idleness,
//! graceful close), `preface.rs` tells HTTP/1.1 from HTTP/2 (and answers a bad HTTP/2 preface),
//! `io.rs` is the socket as hyper sees it (head tracking, lingering close).
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::conn::Registry;
use crate::snapshot::Shared;
use crate::upstream;
use connection::{serve_client, ConnCx, Limits};

/// Largest request head accepted; larger heads are answered 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Errors starting the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds `threads` sockets per address. The first socket of an address resolves port 0; the
/// others bind the port it got.
fn bind_all(
    addrs: &[SocketAddr],
    threads: usize,
) -> Result<(Vec<SocketAddr>, Vec<Vec<std::net::TcpListener>>), ServerError> {
    let mut bound = Vec::new();
    let mut per_thread: Vec<Vec<std::net::TcpListener>> =
        (0..threads).map(|_| Vec::new()).collect();
    for &addr in addrs {
        let err = |source| ServerError::Bind { addr, source };
        let first = reuseport_socket(addr).map_err(err)?;
        let actual = first.local_addr().map_err(err)?;
        bound.push(actual);
        per_thread[0].push(first);
        for sockets in per_thread.iter_mut().skip(1) {
            sockets.push(reuseport_socket(actual).map_err(err)?);
        }
    }
    Ok((bound, per_thread))
}

/// A listener socket of one proxy thread, plain or TLS.
type ThreadListener = (std::net::TcpListener, Option<TlsAcceptor>);

/// Binds the listeners (plain, and TLS with `tls`) and starts the proxy threads. They stop
/// accepting when `token` is cancelled, then give in-flight requests `drain_timeout` to finish.
pub fn start(
    cfg: &ServerConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
    token: CancellationToken,
) -> Result<ProxyThreads, ServerError> {
    let threads = match cfg.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (addrs, plain) = bind_all(&cfg.listen, threads)?;
    let (tls_addrs, secure) = match (&cfg.tls, tls) {
        (Some(t), Some(server_cfg)) => {
            let (a, l) = bind_all(&t.listen, threads)?;
            let acceptor = TlsAcceptor::from(server_cfg);
            let l: Vec<Vec<ThreadListener>> = l
                .into_iter()
                .map(|v| v.into_iter().map(|s| (s, Some(acceptor.clone()))).collect())
                .collect();
            (a, l)
        }
        _ => (Vec::new(), (0..threads).map(|_| Vec::new()).collect()),
    };
    let per_thread: Vec<Vec<ThreadListener>> = plain
        .into_iter()
        .zip(secure)
        .map(
            |(p, s): (Vec<std::net::TcpListener>, Vec<ThreadListener>)| {
                p.into_iter().map(|l| (l, None)).chain(s).collect()
            },
        )
        .collect();
    // Validation keeps max_connections far below the semaphore's limit; clamped all the same,
    // as `Semaphore::new` panics beyond it.
    let limit = Arc::new(Semaphore::new(
        cfg.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let registry = Arc::new(Registry::default());
    let mut handles = Vec::new();
    for (i, listeners) in per_thread.into_iter().enumerate() {
        let shared = shared.clone();
        let token = token.clone();
        let limit = limit.clone();
        let registry = registry.clone();
        let handle = std::thread::Builder::new()
            .name(format!("syncgate-proxy-{i}"))
            .spawn(move || {
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
                rt.block_on(thread_main(listeners, shared, token, limit, registry));
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

async fn thread_main(
    listeners: Vec<ThreadListener>,
    shared: Arc<Shared>,
    token: CancellationToken,
    limit: Arc<Semaphore>,
    registry: Arc<Registry>,
) {
    let sweeper = {
        let token = token.clone();
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
    let mut loops = Vec::new();
    for (l, acceptor) in listeners {
        let listener = match TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register listener");
                continue;
            }
        };
        let cx = ConnCx {
            shared: shared.clone(),
            builder: Arc::new(builder()),
            token: token.clone(),
            registry: registry.clone(),
        };
        loops.push(tokio::spawn(accept_loop(
            listener,
            acceptor,
            cx,
            limit.clone(),
        )));
    }
    for l in loops {
        let _ = l.await;
    }
    let _ = sweeper.await;
}

/// hyper's connection builder. HTTP/1.1 runs without hyper's header timer (see
/// `connection.rs`: syncgate enforces `header_read_timeout` itself).
fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    cx: ConnCx,
    limit: Arc<Semaphore>,
) {
    // Every connection task, so that shutdown can wait for them (up to `drain_timeout`).
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cx.token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                // At max_connections: make room by closing the connection idle longest, then
                // wait for its slot (if none is idle, for any; the kernel's backlog holds the
                // clients behind this one meanwhile).
                if !cx.registry.reclaim_idlest(crate::clock::now_millis()) {
                    tracing::debug!("max_connections reached and no connection is idle");
                }
                tokio::select! {
                    _ = cx.token.cancelled() => break,
                    p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                }
            }
        };
        // Read from the running config for each connection: a reload applies to the
        // connections accepted after it.
        let limits = {
            let snapshot = cx.shared.snapshot();
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
    // The running config's value: a reload may have changed it since start.
    let drain = cx.shared.snapshot().config.server.drain_timeout;
    // The connections saw the same token and are closing gracefully.
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?drain, "drain timeout reached; closing remaining connections");
    }
}
