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
//! - [`sim`]: simulated workers (demo, tests, benchmarks).
//! - [`demo`]: the `syncgate demo` scenario.
//!
//! [`start`] wires them together; `main.rs` is only the command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod balance;
pub mod body;
pub mod config;
pub mod demo;
pub mod events;
pub mod guard;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod server;
pub mod sim;
pub mod snapshot;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, State};
use crate::config::Config;
use crate::snapshot::{Shared, Snapshot};

/// Errors starting syncgate.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The client listeners could not start.
    #[error(transparent)]
    Server(#[from] server::ServerError),
}

/// A running syncgate: proxy threads, probers, and their shared state.
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    token: CancellationToken,
    tasks: TaskTracker,
    proxy: server::ProxyThreads,
    probers: Arc<std::sync::Mutex<Probers>>,
}

/// Starts syncgate with `config` on the current tokio runtime (probers, control tasks) plus
/// its own proxy threads. Every backend starts `pending`.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let server_cfg = config.server.clone();
    let shared = Shared::new(config);
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let proxy = server::start(&server_cfg, shared.clone(), token.child_token())?;
    let probers = Arc::new(std::sync::Mutex::new(Probers::default()));
    let running = Running {
        shared,
        token,
        tasks,
        proxy,
        probers,
    };
    running.sync_probers(&running.shared.snapshot(), &[]);
    for addr in &running.proxy.addrs {
        tracing::info!(listen = %addr, "proxy listening");
    }
    Ok(running)
}

/// The prober task of every live backend, by backend id.
#[derive(Debug, Default)]
struct Probers {
    tokens: HashMap<u64, CancellationToken>,
}

impl Running {
    /// The proxy's bound addresses (ports resolved).
    pub fn proxy_addrs(&self) -> &[SocketAddr] {
        &self.proxy.addrs
    }

    /// State shared with the proxy threads (snapshot, backends, events, metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts probers for new backends, stops those of removed ones, and drains removed
    /// backends: they leave the registry when idle or after `drain_timeout`.
    fn sync_probers(&self, snapshot: &Snapshot, removed: &[Arc<Backend>]) {
        let mut probers = self.probers.lock().unwrap_or_else(|e| e.into_inner());
        for b in snapshot.backends() {
            probers.tokens.entry(b.id).or_insert_with(|| {
                let token = self.token.child_token();
                self.tasks.spawn(readiness::run_prober(
                    b.clone(),
                    self.shared.clone(),
                    token.clone(),
                ));
                token
            });
        }
        let drain = snapshot.config.server.drain_timeout;
        for b in removed {
            if let Some(t) = probers.tokens.remove(&b.id) {
                t.cancel();
            }
            self.tasks.spawn(drain_removed(
                b.clone(),
                self.shared.clone(),
                drain,
                self.token.child_token(),
            ));
        }
    }

    /// Stops accepting, lets in-flight requests finish within `drain_timeout`, stops every
    /// task. Returns when all is done.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.token.cancel();
        self.tasks.close();
        self.proxy.join().await;
        self.tasks.wait().await;
        tracing::info!("stopped");
    }
}

/// Waits for a removed backend to go idle (or the drain deadline), then forgets it.
async fn drain_removed(
    backend: Arc<Backend>,
    shared: Arc<Shared>,
    deadline: Duration,
    token: CancellationToken,
) {
    let until = tokio::time::Instant::now() + deadline;
    while backend.in_flight() > 0 && tokio::time::Instant::now() < until {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    debug_assert!(backend.state() == State::Draining || backend.is_removed());
    tracing::info!(pool = %backend.pool, backend = %backend.name, in_flight = backend.in_flight(), "removed backend drained");
    shared.forget(&backend);
}
