//! syncgate: a readiness-gated reverse proxy and load balancer for push APIs.
//!
//! A worker is admitted to traffic only after its readiness probe reports a complete key sync
//! that agrees with its ready peers, so that a worker that does not know the account keys yet
//! never answers `401` to a client (see `DESIGN.md` and the README).
//!
//! Module map, in the order a request meets them:
//!
//! - [`config`]: raw TOML types → validated [`config::Config`], every error with file:line:col.
//! - [`snapshot`]: the immutable runtime [`snapshot::Snapshot`] (routes, pools) behind an
//!   `ArcSwap`, and [`snapshot::Shared`], what outlives snapshots (backend registry, events).
//! - [`server`]: listeners, one single-threaded runtime per proxy thread, graceful shutdown.
//! - [`proxy`]: the hyper service: route → pick → forward → guard.
//! - [`balance`]: p2c, smooth weighted round robin, consistent hashing (pure, no I/O).
//! - [`upstream`]: per-thread pooled HTTP/1.1 connections to the workers.
//! - [`body`]: request and response body types.
//! - [`guard`]: passive outlier detection (connect failures, 5xx) with an ejection cap.
//! - [`backend`]: backend identity + shared atomic state + the one readiness predicate.
//! - [`readiness`]: the key-sync contract, fleet checks, rise/fall gate, prober task.
//! - [`events`]: the bounded log of state transitions.
//! - [`metrics`]: counters and histograms as atomics.
//! - [`reload`]: hot reload (file watch, SIGHUP, admin), prober lifecycle, config identity.
//! - [`admin`]: admin HTTP API, status page, Prometheus metrics, operator actions.
//! - [`tls`]: rustls server config with a hot-swappable certificate.
//! - [`sim`]: simulated workers (demo, tests, benchmarks).
//! - [`demo`]: the `syncgate demo` scenario.
//!
//! [`start`] wires them together; `main.rs` is only the command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod backend;
pub mod balance;
pub mod body;
mod clock;
pub mod config;
mod conn;
mod counters;
pub mod demo;
pub mod events;
mod host;
pub mod metrics;
mod outlier;
pub mod proxy;
pub mod readiness;
pub mod reload;
pub mod server;
pub mod snapshot;
mod systemd;
pub mod tls;
pub mod upstream;

pub use clock::now_millis;
pub use systemd::{notify_systemd, SystemdState};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::reload::Control;
use crate::snapshot::Shared;

/// Errors starting syncgate.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The client listeners could not start.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The admin listener could not start.
    #[error("cannot listen on admin address {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file's directory cannot be watched.
    #[error("cannot watch the config file: {0}")]
    Watch(#[from] notify::Error),
    /// The TLS certificate or key did not load.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running syncgate: proxy threads, admin listener, probers, reloader.
#[derive(Debug)]
pub struct Running {
    control: Arc<Control>,
    proxy: server::ProxyThreads,
    admin_addr: SocketAddr,
}

/// Starts syncgate with `config`: proxy threads of its own, and the control plane (probers,
/// admin API, file watcher) on the current tokio runtime. Every backend starts `pending`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let server_cfg = config.server.clone();
    let admin_addr = config.admin.listen;
    let path = config.source.clone();
    let file_bytes = match &path {
        Some(p) => tokio::fs::read(p).await.ok(),
        None => None,
    };
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|source| StartError::Admin {
            addr: admin_addr,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Admin {
            addr: admin_addr,
            source,
        })?;
    let certs = match &config.server.tls {
        Some(t) => Some(tls::CertStore::load(&t.cert, &t.key)?),
        None => None,
    };
    let tls_config = certs.as_ref().map(|c| c.server_config()).transpose()?;
    let shared = Shared::new(config);
    let token = CancellationToken::new();
    let proxy = server::start(&server_cfg, tls_config, shared.clone(), token.child_token())?;
    let control = Control::new(
        shared,
        path.clone(),
        file_bytes.as_deref(),
        certs,
        token,
        TaskTracker::new(),
    );
    if let Some(p) = &path {
        reload::watch(control.clone(), p)?;
    }
    control
        .tasks()
        .spawn(admin::serve(admin_listener, control.clone()));
    for addr in &proxy.addrs {
        tracing::info!(listen = %addr, "proxy listening");
    }
    for addr in &proxy.tls_addrs {
        tracing::info!(listen = %addr, "proxy listening (TLS)");
    }
    tracing::info!(listen = %admin_addr, "admin listening");
    Ok(Running {
        control,
        proxy,
        admin_addr,
    })
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

    /// Stops accepting, lets in-flight requests finish within `drain_timeout`, stops every
    /// task. Returns when all is done.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.control.token().cancel();
        self.control.tasks().close();
        self.proxy.join().await;
        self.control.tasks().wait().await;
        tracing::info!("stopped");
    }
}
