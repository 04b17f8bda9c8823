//! syncgate: a readiness-gated reverse proxy and load balancer for push APIs.
//!
//! A worker is admitted to traffic only after its readiness probe reports a complete key sync
//! that agrees with its ready peers, so that a worker that does not know the account keys yet
//! never answers `401` to a client (see `DESIGN.md` and the README).
//!
//! Modules are private; what the binary, the tests and the benchmarks use is re-exported
//! below. The modules form layers, lowest first: each uses only the layers below it and the
//! leaves, so nothing on the request path knows the control plane above it.
//!
//! - Leaves, which use nothing but other leaves: `clock` (monotonic milliseconds, a per-thread
//!   coarse clock, RFC 3339), `deadline` (request deadlines and connection checks in a
//!   per-thread list swept by one task, no timer each; the sweep sets the coarse clock),
//!   `host` (a host without its port), `events` (the bounded log of state transitions),
//!   `metrics` (counters and histograms as atomics; the process's own figures from `/proc`),
//!   `counters` (outlier streaks, the
//!   contradiction window, the retry budget), `conn` (a client connection's facts and
//!   activity, what the server does about it, and the registry the connection limit reclaims
//!   idle connections from), `tls` (the served certificate, hot-swappable), `systemd`,
//!   `digest`, `files` (bounded, non-blocking reads of the files a config names), `gather`
//!   (a few small buffers written as one `write(2)`, not a `writev`), and
//!   `memory` (credential fingerprints and the fixed-size tables the guard keeps them in).
//! - config: raw TOML → validated [`Config`], every error with file:line:col.
//! - state: `backend`, identity + shared atomic state + the one readiness predicate
//!   ([`Backend::is_routable`]); `body`, the request body on its way upstream;
//!   `access_log`, one line per request (an entry the server begins and the proxy
//!   fills in as it goes, per-thread batches, a writer thread).
//! - selection: `balance`, p2c, smooth weighted round robin and consistent hashing, generic
//!   over what it selects ([`Balancer`]), no I/O, no config types.
//! - upstream: per-thread pooled HTTP/1.1 connections (plain or TLS) to the workers, and the
//!   request heads and header maps each proxy thread reuses.
//! - runtime: `snapshot`, the immutable routes and pools behind one `ArcSwap`, and
//!   [`Shared`], what outlives snapshots (backends by identity, pool state by name, events,
//!   metrics); `outlier`, passive outlier detection and the ejection cap; `fleet`, a pool's
//!   key-sync aggregates (peer reference values, the key count at the newest generation, the
//!   key-set epoch, fail-closed).
//! - proxy: the hyper service: route → forward (one exchange loop: connect retries, retry
//!   budget) → guard (the second opinion, a pure verdict, and the credential memories).
//! - server: listeners, one single-threaded runtime per proxy thread, the connection limit
//!   (reclaiming idle connections), protocol sniffing (a bad HTTP/2 preface gets `GOAWAY`),
//!   header and idle timeouts, parking idle HTTP/1.1 connections without hyper's buffers,
//!   lingering close, graceful shutdown.
//! - control: `readiness` (the key-sync contract, fleet checks, rise/fall gate, prober task),
//!   `availability` (one log line and event when a pool loses its last ready backend, and
//!   when it has one again), `discover` (DNS sources of backends: one resolving task each, reporting to the control
//!   plane) and `reload` (hot reload, prober lifecycle, config identity, and the one lock
//!   under which reloads and DNS changes install snapshots).
//! - admin: the admin HTTP API, status page, Prometheus metrics, operator actions, and
//!   `/readyz`, which describes this instance (serving or shutting down), not its pools.
//!
//! [`logging`] sets up syncgate's own log (text or flattened JSON on stderr) for `main.rs`.
//! [`demo`] (the `syncgate demo` scenario and its simulated workers, which the tests and
//! benchmarks use too) stands beside them and uses only the public API. [`start`] wires
//! everything together; `main.rs` is only the command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod access_log;
mod admin;
mod availability;
mod backend;
mod balance;
mod body;
mod clock;
mod config;
mod conn;
mod counters;
mod deadline;
pub mod demo;
mod digest;
mod discover;
mod events;
mod files;
mod fleet;
mod gather;
mod host;
pub mod logging;
mod memory;
mod metrics;
mod outlier;
#[cfg(test)]
mod proptests;
mod proxy;
mod readiness;
mod reload;
mod server;
mod snapshot;
mod systemd;
mod tls;
mod upstream;

pub use backend::{Backend, State};
pub use balance::{Algorithm, Balancer, PickContext};
pub use clock::now_millis;
pub use config::{Config, ConfigError, HostMatch, LoadError};
pub use digest::sha256_hex;
pub use events::EventLog;
pub use memory::{Fingerprint, Table as MemoryTable};
pub use metrics::GuardOutcome;
pub use snapshot::Shared;
pub use systemd::{notify_systemd, SystemdState};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::reload::Control;

/// Errors starting syncgate.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The client listeners could not start.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The admin listener could not start.
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        /// The configured `[admin] listen` address.
        addr: SocketAddr,
        /// Why it could not be bound.
        source: std::io::Error,
    },
    /// The config file's directory cannot be watched.
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
    /// The TLS certificate or key did not load.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The access log file could not be opened.
    #[error(transparent)]
    AccessLog(#[from] access_log::AccessLogError),
}

/// A running syncgate: proxy threads, admin listener, probers, reloader.
#[derive(Debug)]
pub struct Running {
    control: Arc<Control>,
    proxy: server::ProxyThreads,
    /// Stops the proxy threads (a child of the control token, cancelled first on shutdown).
    proxy_token: CancellationToken,
    /// What `/readyz` reports; `Stopping` from the moment shutdown begins.
    phase: Arc<admin::Lifecycle>,
    admin_addr: SocketAddr,
}
/// Starts syncgate with `config`: proxy threads of its own, and the control plane (probers,
/// admin API, file watcher) on the current tokio runtime. Every backend starts `pending`. An
/// address another process listens on is an error ([`StartOptions::takeover`] shares it).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}

/// How [`start_with`] starts syncgate.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Start beside a running syncgate on the same listen addresses (`syncgate run
    /// --takeover`): bind them shared, probe the backends, and listen only once every pool has
    /// a ready backend (or [`TAKEOVER_WAIT`] has passed), so that the new instance takes no
    /// client it could only answer `503`. The operator then stops the old instance, which
    /// drains.
    pub takeover: bool,
}

/// How long a takeover waits for every pool to have a ready backend before it listens anyway.
pub const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`start`] with options.
pub async fn start_with(config: Config, options: StartOptions) -> Result<Running, StartError> {
    let mode = if options.takeover {
        server::Bind::Takeover
    } else {
        server::Bind::Exclusive
    };
    let server_cfg = config.server.clone();
    let path = config.source.clone();
    // Read as the config was: bounded, and never blocking on a FIFO.
    let file_bytes = path.as_deref().and_then(|p| Config::read(p).ok());
    let admin_error = |addr, source| StartError::Admin { addr, source };
    let admin_listener = server::bind_admin(config.admin.listen, mode).map_err(|e| match e {
        server::ServerError::Bind { addr, source } => admin_error(addr, source),
        other => StartError::Server(other),
    })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| admin_error(config.admin.listen, e))?;
    let admin_listener = tokio::net::TcpListener::from_std(admin_listener)
        .map_err(|e| admin_error(admin_addr, e))?;
    let certs = match &config.server.tls {
        Some(t) => Some(tls::CertStore::load(&t.cert, &t.key)?),
        None => None,
    };
    let tls_config = certs.as_ref().map(|c| c.server_config()).transpose()?;
    let bound = server::bind(&server_cfg, mode)?;
    let shared = Shared::new(config);
    shared.access_log.start(&server_cfg.access_log)?;
    let token = CancellationToken::new();
    let proxy_token = token.child_token();
    // What `/readyz` reports: starting until the listeners listen (a takeover waits for its
    // pools first), serving, then stopping from the moment shutdown begins.
    let phase = Arc::new(admin::Lifecycle::default());
    let control = Control::new(
        shared.clone(),
        path.clone(),
        file_bytes.as_deref(),
        certs,
        token.clone(),
        TaskTracker::new(),
    );
    let started = async {
        if let Some(p) = &path {
            reload::watch(control.clone(), p)?;
        }
        control
            .tasks()
            .spawn(admin::serve(admin_listener, control.clone(), phase.clone()));
        tracing::info!(listen = %admin_addr, "admin listening");
        if options.takeover {
            await_ready_pools(&shared, TAKEOVER_WAIT).await;
        }
        Ok::<_, StartError>(bound.start(
            &server_cfg,
            tls_config,
            shared.clone(),
            proxy_token.clone(),
        )?)
    }
    .await;
    let proxy = match started {
        Ok(proxy) => proxy,
        Err(e) => {
            // Nothing may outlive a failed start: probers, the watcher, the admin listener.
            token.cancel();
            control.tasks().close();
            control.tasks().wait().await;
            return Err(e);
        }
    };
    // Listening: from here on `/readyz` says this instance serves.
    phase.set(admin::Phase::Serving);
    for addr in &proxy.addrs {
        tracing::info!(listen = %addr, "proxy listening");
    }
    for addr in &proxy.tls_addrs {
        tracing::info!(listen = %addr, "proxy listening (TLS)");
    }
    Ok(Running {
        control,
        proxy,
        proxy_token,
        phase,
        admin_addr,
    })
}

/// Waits until every pool has a ready backend, or `limit` has passed (then says which pools
/// have none: the instance listens anyway, as the one it replaces could not serve them either).
async fn await_ready_pools(shared: &Shared, limit: std::time::Duration) {
    let unready = || -> Vec<String> {
        let snapshot = shared.snapshot();
        snapshot
            .pools
            .iter()
            .filter(|p| !p.backends.iter().any(|b| b.is_routable()))
            .map(|p| p.name.to_string())
            .collect()
    };
    let deadline = tokio::time::Instant::now() + limit;
    tracing::info!("takeover: listening once every pool has a ready backend");
    loop {
        let pools = unready();
        if pools.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(pools = ?pools, waited = ?limit, "takeover: pools without a ready backend; listening anyway");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Running {
    /// The proxy's bound addresses (ports resolved).
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy.addrs
    }

    /// The proxy's bound TLS addresses (ports resolved).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.proxy.tls_addrs
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// State shared with the proxy threads (snapshot, backends, events, metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.control.shared
    }

    /// The control plane (reload, config status).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Reopens the access log file by its path (what `SIGUSR1` does, after logrotate renamed
    /// it); the lines from then on go to the new file.
    pub fn reopen_access_log(&self) {
        self.control.shared.access_log.reopen();
    }

    /// Stops accepting, lets in-flight requests finish within `drain_timeout`, stops every
    /// task. Returns when all is done.
    ///
    /// The control plane outlives the drain: while in-flight requests finish, the probers keep
    /// the backends' states current and the admin API keeps answering, `/readyz` with 503 so
    /// that an outer load balancer sends nothing new.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.phase.set(admin::Phase::Stopping);
        self.proxy_token.cancel();
        self.proxy.join().await;
        // Every proxy thread has handed its last lines over as it ended.
        self.control.shared.access_log.close().await;
        self.control.token().cancel();
        self.control.tasks().close();
        self.control.tasks().wait().await;
        tracing::info!("stopped");
    }
}
