//! Client listeners: one single-threaded runtime per proxy thread, each with its own
//! `SO_REUSEPORT` socket per listen address, its own upstream connection pool, and graceful
//! shutdown with a deadline.
//!
//! Why per-thread runtimes: a shared pool and cross-thread wake-ups cost more CPU per request
//! than the proxying itself (DESIGN.md, "Performance notes"). With `SO_REUSEPORT` the kernel
//! spreads connections across the threads, and a connection never leaves its thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::conn::{Activity, ConnInfo};
use crate::proxy;
use crate::snapshot::Shared;
use crate::upstream;

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
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let mut handles = Vec::new();
    for (i, listeners) in per_thread.into_iter().enumerate() {
        let shared = shared.clone();
        let token = token.clone();
        let limit = limit.clone();
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
                rt.block_on(thread_main(listeners, shared, token, limit));
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
        loops.push(tokio::spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
            token.clone(),
            limit.clone(),
        )));
    }
    for l in loops {
        let _ = l.await;
    }
    let _ = sweeper.await;
}

fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

/// Serves HTTP/1.1 or HTTP/2 (detected from the preface) on one client connection until the
/// client leaves, the connection has had no request in progress for `idle_timeout`, or
/// `token` asks for shutdown; the last two close it gracefully (HTTP/2 `GOAWAY`, HTTP/1.1
/// without keep-alive) so that requests in progress finish.
async fn serve_conn<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    info: ConnInfo,
    token: CancellationToken,
    idle_timeout: Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            // In progress from the call until the response headers are ready (the service's
            // future ends), whatever the body does afterwards.
            let active = activity.begin();
            let serving = proxy::serve(shared.clone(), info.clone(), req);
            async move {
                let resp = serving.await;
                drop(active);
                resp
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Checked a few times per timeout: the connection closes between 1 and 1.25 timeouts
    // after its last request, at the cost of one timer per connection.
    // At least 1 ms: `interval` panics on a zero period, and "3ns" is a valid timeout.
    let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(1)));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            // The connection first: a request already in the socket when shutdown begins is
            // read and served before the graceful close.
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = token.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = check.tick(), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_timeout) {
                    tracing::debug!(peer = %peer, "idle client connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    token: CancellationToken,
    limit: Arc<Semaphore>,
) {
    // `header_read_timeout` is read from the running config for each new connection, so a
    // reload applies to the connections accepted after it; the builder is rebuilt only when
    // the value changed.
    let mut header_timeout = shared.snapshot().config.server.header_read_timeout;
    let mut builder = Arc::new(builder(header_timeout));
    // Every connection task, so that shutdown can wait for them (up to `drain_timeout`).
    let connections = TaskTracker::new();
    loop {
        // Take a connection slot before accepting: beyond `max_connections`, clients wait in
        // the kernel's backlog instead of being accepted and starved.
        let permit = tokio::select! {
            _ = token.cancelled() => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => break,
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
        let (configured, idle_timeout) = {
            let snapshot = shared.snapshot();
            let server = &snapshot.config.server;
            (server.header_read_timeout, server.idle_timeout)
        };
        if configured != header_timeout {
            header_timeout = configured;
            builder = Arc::new(self::builder(header_timeout));
        }
        let _ = stream.set_nodelay(true);
        let info = ConnInfo::new(peer, acceptor.is_some());
        let shared = shared.clone();
        let builder = builder.clone();
        let token = token.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            let _permit = permit;
            // hyper's header timeout starts once the protocol is known; a client that connects
            // and sends nothing (or stalls its TLS handshake) must not hold a slot forever.
            match acceptor {
                Some(acceptor) => {
                    // Shutdown does not wait for a handshake that has not finished.
                    let handshake = tokio::select! {
                        biased;
                        r = tokio::time::timeout(header_timeout, acceptor.accept(stream)) => r,
                        _ = token.cancelled() => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => {
                            serve_conn(tls, &builder, shared, info, token, idle_timeout).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    let mut first = [0u8; 1];
                    // Shutdown does not wait for a client that has sent nothing yet.
                    let peeked = tokio::select! {
                        biased;
                        r = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => r,
                        _ = token.cancelled() => return,
                    };
                    match peeked {
                        Ok(Ok(n)) if n > 0 => {
                            serve_conn(stream, &builder, shared, info, token, idle_timeout).await
                        }
                        _ => {}
                    }
                }
            }
        });
    }
    drop(listener);
    // The running config's value: a reload may have changed it since start.
    let drain = shared.snapshot().config.server.drain_timeout;
    // The connections saw the same token and are closing gracefully.
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?drain, "drain timeout reached; closing remaining connections");
    }
}
