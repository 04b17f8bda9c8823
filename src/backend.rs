//! Backend identity, shared backend state, and the one readiness predicate.
//!
//! A [`Backend`] is created once per `(pool, name, addr)` identity and shared through an `Arc`
//! by the snapshot (request path), its prober, the response guard and the admin API. It
//! survives config reloads as long as its identity is unchanged. Everything that changes at
//! runtime is an atomic, so the request path never takes a lock; the `Mutex`-guarded
//! [`BackendInfo`] is written only on probes and state changes and read only by the admin API.
//!
//! State changes go through [`Backend::transition`], a compare-and-swap that logs and records
//! an event only when the state really changes. Whether a backend may receive a request is
//! decided in exactly one place: [`Backend::is_routable`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::clock::now_millis;
use crate::counters::OutlierCounters;
use crate::events::EventLog;
use crate::metrics::{BackendMetrics, StatusCounters};

/// The lifecycle state of a backend (DESIGN.md, "Backend states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Configured, not yet `rise` passing probes in a row. No traffic.
    Pending = 0,
    /// Admitted; its weight ramps up over `slow_start`. Gets traffic.
    Ready = 1,
    /// Was ready, taken out by failed probes or the response guard. No traffic until `rise`
    /// passing probes.
    Ejected = 2,
    /// Removed from the config or drained by an operator; in-flight requests finish.
    Draining = 3,
    /// Drained by an operator and idle; probed, never routed until enabled.
    Disabled = 4,
}

impl State {
    /// The state's name as the admin API and logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Ready => "ready",
            State::Ejected => "ejected",
            State::Draining => "draining",
            State::Disabled => "disabled",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Pending,
            1 => State::Ready,
            2 => State::Ejected,
            3 => State::Draining,
            _ => State::Disabled,
        }
    }

    /// All states, in the order metrics list them.
    pub const ALL: [State; 5] = [
        State::Pending,
        State::Ready,
        State::Ejected,
        State::Draining,
        State::Disabled,
    ];
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last key-sync report a backend's probe returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeySync {
    /// The worker holds the full set of active keys.
    pub complete: bool,
    /// Version of the key set the worker has loaded.
    pub generation: u64,
    /// Number of active keys the worker holds.
    pub keys: u64,
}

/// State changes of every backend so far (see [`transitions`]).
static TRANSITIONS: AtomicU64 = AtomicU64::new(0);

/// How many state changes any backend has made so far: lets summaries of many backends (the
/// fleet aggregates) notice a change that nobody told them about.
pub fn transitions() -> u64 {
    TRANSITIONS.load(Ordering::Acquire)
}

/// Admin-facing details of a backend: written on probes and transitions, never on the request
/// path.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    /// Why the backend is in its state, or why its last probe failed.
    pub reason: String,
    /// When the current state was entered.
    pub since: SystemTime,
    /// The last key-sync report (key-sync contract only).
    pub key_sync: Option<KeySync>,
    /// How long the last probe took.
    pub last_probe_latency: Option<Duration>,
    /// Whether the last probe passed.
    pub last_probe_ok: Option<bool>,
    /// When the last probe finished.
    pub last_probe_at: Option<SystemTime>,
    /// When `key_sync` was reported. Older than `last_probe_at` when the last probe brought no
    /// report (connect refused, timeout, a body that is no report): `key_sync` is then stale.
    pub key_sync_at: Option<SystemTime>,
}

/// One backend: immutable identity plus shared runtime state.
pub struct Backend {
    /// Process-unique id of this state object (keys the per-thread connection pools).
    pub id: u64,
    /// Pool name (identity).
    pub pool: Arc<str>,
    /// Backend name, unique in its pool (identity).
    pub name: Arc<str>,
    /// Worker address (identity).
    pub addr: SocketAddr,
    /// Pre-rendered `IP:port`, used as the upstream authority.
    pub authority: http::uri::Authority,
    /// The discover source that found it; None for a backend of the config file.
    pub source: Option<Arc<str>>,
    state: AtomicU8,
    /// Configured weight; updated in place by a reload.
    weight: AtomicU32,
    /// `now_millis()` when the backend last became ready (slow start), 0 if never.
    ready_at: AtomicU64,
    in_flight: AtomicU64,
    /// Set when the backend left the config; its prober stops and it is dropped when idle.
    removed: AtomicBool,
    /// Requests forwarded to this backend, by answer class.
    pub answers: StatusCounters,
    /// Connect failures (refused, reset before sending, connect timeout).
    pub connect_failures: AtomicU64,
    /// Passive outlier-detection counters.
    pub outlier: OutlierCounters,
    /// Probes, ejections, upstream latency and body bytes (they leave `/metrics` with the
    /// backend).
    pub metrics: BackendMetrics,
    info: Mutex<BackendInfo>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("pool", &self.pool)
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("state", &self.state())
            .finish()
    }
}

impl Backend {
    /// A new backend in state `pending`.
    pub fn new(pool: &str, name: &str, addr: SocketAddr, weight: u32) -> Backend {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let authority = http::uri::Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is a valid authority");
        Backend {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pool: pool.into(),
            name: name.into(),
            addr,
            authority,
            source: None,
            state: AtomicU8::new(State::Pending as u8),
            weight: AtomicU32::new(weight),
            ready_at: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            answers: StatusCounters::default(),
            connect_failures: AtomicU64::new(0),
            outlier: OutlierCounters::default(),
            metrics: BackendMetrics::default(),
            info: Mutex::new(BackendInfo {
                reason: "configured".into(),
                since: SystemTime::now(),
                key_sync: None,
                last_probe_latency: None,
                last_probe_ok: None,
                last_probe_at: None,
                key_sync_at: None,
            }),
        }
    }

    /// The same backend, found by the discover source `source`.
    pub fn with_source(mut self, source: Arc<str>) -> Backend {
        self.source = Some(source);
        self
    }

    /// `static` for a backend of the config file, else its discover source's name.
    pub fn source_name(&self) -> &str {
        self.source.as_deref().unwrap_or("static")
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// THE readiness predicate: may this backend receive a new request? Used by the balancer,
    /// the guard's peer selection, the fleet checks and `/readyz` alike.
    #[inline]
    pub fn is_routable(&self) -> bool {
        self.state.load(Ordering::Acquire) == State::Ready as u8
    }

    /// Moves the backend from one of `from` to `to`. Returns false (and does nothing) when the
    /// current state is not in `from`, so concurrent deciders (prober, guard, operator, reload)
    /// cannot undo each other: the compare-and-swap picks exactly one winner.
    ///
    /// The info lock is held across the swap, so the state, its reason and the event log
    /// always agree: two racing transitions cannot leave the loser's reason on the winner's
    /// state. Readers of the state alone (the request path) never take that lock.
    pub fn transition(&self, from: &[State], to: State, reason: &str, events: &EventLog) -> bool {
        let mut info = self.info();
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let cur_state = State::from_u8(current);
            if cur_state == to || !from.contains(&cur_state) {
                return false;
            }
            if to == State::Ready {
                // Stamp before publishing `Ready` so the balancer never sees a ready backend
                // without its slow-start origin.
                self.ready_at.store(now_millis(), Ordering::Release);
                // A (re-)admitted backend starts its passive-detection runs afresh: failures
                // from before, or from requests that finished after an ejection, must not
                // eject it at its first failure.
                self.outlier.reset_runs();
            }
            match self.state.compare_exchange(
                current,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    TRANSITIONS.fetch_add(1, Ordering::AcqRel);
                    info.reason = reason.to_string();
                    info.since = SystemTime::now();
                    // An ejection takes capacity away: operators alert on it.
                    if to == State::Ejected {
                        tracing::warn!(
                            pool = %self.pool,
                            backend = %self.name,
                            addr = %self.addr,
                            from = %cur_state,
                            to = %to,
                            reason = %reason,
                            "backend state changed"
                        );
                    } else {
                        tracing::info!(
                            pool = %self.pool,
                            backend = %self.name,
                            addr = %self.addr,
                            from = %cur_state,
                            to = %to,
                            reason = %reason,
                            "backend state changed"
                        );
                    }
                    events.record(
                        &self.pool,
                        &self.name,
                        cur_state.as_str(),
                        to.as_str(),
                        reason,
                    );
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// The configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Applies a weight from a reloaded config.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// The weight the balancer uses now: the configured weight scaled by the slow-start ramp.
    /// Returned in thousandths of a weight unit so that the ramp is smooth.
    #[inline]
    pub fn effective_weight(&self, slow_start: Duration, now_ms: u64) -> u64 {
        let base = u64::from(self.weight()) * 1000;
        let ready_at = self.ready_at.load(Ordering::Acquire);
        slow_start_weight(base, now_ms.saturating_sub(ready_at), slow_start)
    }

    /// Requests currently forwarded to this backend and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Marks the backend as gone from the config (its prober stops).
    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Takes back a removed backend that is in the config (or DNS) again while still
    /// draining: it keeps this state object (counters, probe history, pooled connections)
    /// instead of getting a second one for the same identity.
    pub fn revive(&self) {
        self.removed.store(false, Ordering::Release);
    }

    /// Whether the backend left the config.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Admin-facing details (probe results, reason, since).
    pub fn info(&self) -> MutexGuard<'_, BackendInfo> {
        // A poisoned lock only means a panic elsewhere while writing plain data; the data is
        // still consistent enough to show.
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last key-sync report, if any.
    pub fn key_sync(&self) -> Option<KeySync> {
        self.info().key_sync
    }
}

/// Keeps a backend's in-flight count raised while alive.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// The backend this request runs on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Slow start: `base` scaled linearly by how far `elapsed` is into `slow_start`, never below
/// 1% so that a just-admitted backend still gets a trickle of traffic.
pub fn slow_start_weight(base: u64, elapsed_ms: u64, slow_start: Duration) -> u64 {
    let window = slow_start.as_millis() as u64;
    if window == 0 || elapsed_ms >= window {
        return base;
    }
    let scaled = base.saturating_mul(elapsed_ms) / window;
    scaled.max(base / 100).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Backend {
        Backend::new("push", "w1", "127.0.0.1:1".parse().unwrap(), 2)
    }

    #[test]
    fn starts_pending_and_not_routable() {
        let b = backend();
        assert_eq!(b.state(), State::Pending);
        assert!(!b.is_routable());
    }

    #[test]
    fn transition_only_from_listed_states() {
        let events = EventLog::new(16);
        let b = backend();
        assert!(!b.transition(&[State::Ready], State::Ejected, "x", &events));
        assert_eq!(b.state(), State::Pending);
        assert!(b.transition(&[State::Pending], State::Ready, "passed", &events));
        assert!(b.is_routable());
        assert_eq!(b.info().reason, "passed");
        // A transition to the current state is not a change and records nothing.
        assert!(!b.transition(&[State::Ready], State::Ready, "again", &events));
        assert_eq!(events.since(0).len(), 1);
    }

    #[test]
    fn slow_start_ramps_linearly_with_floor() {
        let w = Duration::from_secs(10);
        assert_eq!(slow_start_weight(1000, 0, w), 10);
        assert_eq!(slow_start_weight(1000, 5_000, w), 500);
        assert_eq!(slow_start_weight(1000, 10_000, w), 1000);
        assert_eq!(slow_start_weight(1000, 99_000, w), 1000);
        assert_eq!(slow_start_weight(1000, 0, Duration::ZERO), 1000);
    }

    #[test]
    fn in_flight_guard_counts() {
        let b = Arc::new(backend());
        let g1 = b.start_request();
        let g2 = b.start_request();
        assert_eq!(b.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(b.in_flight(), 0);
    }
}
