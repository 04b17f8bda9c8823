//! Simulated push-API worker.
//!
//! A [`SimWorker`] is a real HTTP server (hyper 1.x, HTTP/1.1 keep-alive and HTTP/2 with prior
//! knowledge on the same port) that behaves like a push-API worker as described in the design's
//! "readiness contract". It is used by `syncgate demo`, the integration tests and the
//! benchmarks.
//!
//! The worker holds a set of active account keys `key-0 .. key-{total_keys-1}`; it "holds" the
//! first `held` of them. Its behaviour:
//!
//! * `/ready` is the readiness probe. When the key sync is complete it answers
//!   `200 {"key_sync":{"complete":true,"generation":G,"keys":N}}`; while syncing it answers
//!   `503 {"key_sync":{"complete":false,"generation":0,"keys":held}}`. A probe override forces
//!   any status and body. After [`SimWorker::forget_keys`] the probe keeps reporting what it
//!   reported before (it lies), modelling a worker that lost its keys between two probes;
//!   after [`SimWorker::truncate_keys`] it reports the truth (fewer keys) but keeps claiming a
//!   complete sync at the same generation, modelling a truncated key database. The probe may
//!   be slowed ([`SimWorker::set_probe_delay`]); the most probes it served at once is counted.
//! * The key set changes like a real account database: [`SimWorker::add_keys`] and
//!   [`SimWorker::remove_key`] each advance the generation.
//! * `/healthz` answers `200 {"status":"ok"}` while the worker runs, whatever its keys: what
//!   an ordinary load balancer's health check sees (counted as a probe).
//! * `/echo` answers `200` with a JSON description of the request it received (method, path with
//!   query, headers, body length, HTTP version), without any key check.
//! * Every other path is a push request: the account key is read from
//!   `authorization: Bearer key-N` (or `x-api-key: key-N`); a held key gets
//!   `200 {"ok":true,"worker":"<addr>","bytes":<body length>}`, anything else
//!   `401 {"error":"unknown account key"}`.
//!
//! Every non-probe request is counted, may be delayed ([`SimWorker::set_delay`]) or answered with
//! a forced status ([`SimWorker::set_status_override`]), and its answer is counted by status.
//! Every answer carries `x-worker: <addr>`.
//!
//! The key sync needs no background task: [`SimWorker::begin_sync`] records a linear ramp and the
//! number of held keys is computed from the elapsed time whenever it is needed.

mod serve;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::header::HeaderValue;
use hyper::StatusCode;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One counter per possible status code (hyper accepts 100..=999).
const STATUS_SLOTS: usize = 1000;

/// Options of a simulated worker.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Size of the full active-key set; the keys are `key-0` .. `key-{total_keys-1}`.
    pub total_keys: u64,
    /// Key-set generation reported by the probe when fully synced.
    pub generation: u64,
    /// `true`: the worker starts holding all keys. `false`: it starts empty (no keys held, sync
    /// incomplete) and waits for [`SimWorker::begin_sync`] or [`SimWorker::set_synced`].
    pub synced: bool,
}

impl Default for SimOptions {
    /// 1000 keys, generation 100, synced.
    fn default() -> Self {
        SimOptions {
            total_keys: 1000,
            generation: 100,
            synced: true,
        }
    }
}

/// How many keys the worker holds, possibly as a function of time.
#[derive(Debug, Clone, Copy)]
enum Holding {
    /// A fixed number of keys.
    Fixed(u64),
    /// A linear ramp from `from` keys at `start` to all keys at `start + duration`.
    Ramp {
        from: u64,
        start: Instant,
        duration: Duration,
    },
}

/// What the probe reports: the sync state of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    complete: bool,
    generation: u64,
    keys: u64,
}

/// The current key plan; replaced as a whole, read lock-free.
#[derive(Debug, Clone)]
struct Plan {
    holding: Holding,
    /// Set by `forget_keys`: the probe keeps answering this report whatever the keys held.
    frozen_report: Option<Report>,
    /// The active key set is `key-0 .. key-{total_keys-1}` without `removed`.
    total_keys: u64,
    /// Keys removed from the active set (cancelled accounts).
    removed: Arc<BTreeSet<u64>>,
    /// Key-set generation reported when the sync is complete.
    generation: u64,
    /// Set by `truncate_keys`: the probe claims a complete sync whatever the keys held.
    claims_complete: bool,
}

impl Plan {
    /// A plan holding `holding` of `prev`'s key set, with no lie.
    fn holding(prev: &Plan, holding: Holding) -> Plan {
        Plan {
            holding,
            frozen_report: None,
            claims_complete: false,
            ..prev.clone()
        }
    }
}

/// Shared state of a simulated worker (the server tasks and the [`SimWorker`] handle).
#[derive(Debug)]
struct SimState {
    plan: ArcSwap<Plan>,
    /// Delay before answering a probe, in nanoseconds; 0 means none.
    probe_delay_nanos: AtomicU64,
    /// Probes being answered now, and the most at once so far.
    probes_in_flight: AtomicU64,
    max_probes_in_flight: AtomicU64,
    probe_override: Mutex<Option<(u16, String)>>,
    /// Forced status for non-probe requests; 0 means none.
    status_override: AtomicU32,
    /// Delay before answering non-probe requests, in nanoseconds; 0 means none.
    delay_nanos: AtomicU64,
    requests: AtomicU64,
    probes: AtomicU64,
    status_counts: Box<[AtomicU64]>,
    /// `x-worker` header value (the worker's address).
    worker: HeaderValue,
    /// The worker's address as a JSON string literal (with quotes).
    worker_json: String,
}

impl SimState {
    fn new(opts: &SimOptions, addr: SocketAddr) -> SimState {
        let held = if opts.synced { opts.total_keys } else { 0 };
        let addr_text = addr.to_string();
        SimState {
            plan: ArcSwap::from_pointee(Plan {
                holding: Holding::Fixed(held),
                frozen_report: None,
                total_keys: opts.total_keys,
                removed: Arc::default(),
                generation: opts.generation,
                claims_complete: false,
            }),
            probe_delay_nanos: AtomicU64::new(0),
            probes_in_flight: AtomicU64::new(0),
            max_probes_in_flight: AtomicU64::new(0),
            probe_override: Mutex::new(None),
            status_override: AtomicU32::new(0),
            delay_nanos: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            status_counts: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            // A socket address is always a valid header value; the fallback is unreachable.
            worker: HeaderValue::from_str(&addr_text)
                .unwrap_or_else(|_| HeaderValue::from_static("sim-worker")),
            worker_json: serde_json::Value::String(addr_text).to_string(),
        }
    }

    /// How far into `key-0 ..` the worker holds keys now according to `plan`.
    fn held_in(&self, plan: &Plan, now: Instant) -> u64 {
        let total = plan.total_keys;
        match plan.holding {
            Holding::Fixed(n) => n.min(total),
            Holding::Ramp {
                from,
                start,
                duration,
            } => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= duration || from >= total {
                    return total;
                }
                let missing = u128::from(total - from);
                let grown = missing * elapsed.as_nanos() / duration.as_nanos().max(1);
                // grown < missing because elapsed < duration, so it fits in u64.
                from + u64::try_from(grown).unwrap_or(total - from)
            }
        }
    }

    /// Active keys held now.
    fn held(&self) -> u64 {
        let plan = self.plan.load();
        let held = self.held_in(&plan, Instant::now());
        held - plan.removed.range(..held).count() as u64
    }

    /// Whether the worker holds active key `key-n` now.
    fn holds(&self, n: u64) -> bool {
        let plan = self.plan.load();
        n < self.held_in(&plan, Instant::now()) && !plan.removed.contains(&n)
    }

    /// The report the probe gives for `plan` (ignoring the probe override).
    fn report_in(&self, plan: &Plan, now: Instant) -> Report {
        if let Some(frozen) = plan.frozen_report {
            return frozen;
        }
        let held = self.held_in(plan, now);
        let keys = held - plan.removed.range(..held).count() as u64;
        let complete = held >= plan.total_keys || plan.claims_complete;
        Report {
            complete,
            generation: if complete { plan.generation } else { 0 },
            keys,
        }
    }

    fn set_plan(&self, plan: Plan) {
        self.plan.store(Arc::new(plan));
    }

    fn count_status(&self, status: StatusCode) {
        let slot = usize::from(status.as_u16()).min(STATUS_SLOTS - 1);
        if let Some(counter) = self.status_counts.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }

    fn status_override(&self) -> Option<StatusCode> {
        match self.status_override.load(Ordering::Relaxed) {
            0 => None,
            code => u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok()),
        }
    }

    fn probe_override(&self) -> Option<(u16, String)> {
        match self.probe_override.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A running simulated worker. Dropping it stops the server too (without waiting); prefer
/// [`SimWorker::stop`], which waits until the listener and every connection are closed.
#[derive(Debug)]
pub struct SimWorker {
    addr: SocketAddr,
    state: Arc<SimState>,
    token: CancellationToken,
    tracker: TaskTracker,
    task: Option<JoinHandle<()>>,
}

impl SimWorker {
    /// Starts a simulated worker on `127.0.0.1` with an ephemeral port.
    pub async fn start(opts: SimOptions) -> std::io::Result<SimWorker> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts a simulated worker bound to `addr` (with `SO_REUSEADDR`, so a stopped worker can
    /// be restarted on the same port).
    pub async fn start_on(addr: SocketAddr, opts: SimOptions) -> std::io::Result<SimWorker> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Self::start_with(socket, opts).await
    }

    /// Starts a simulated worker listening on `socket`, bound already: a port held since it
    /// was reserved (bound, not listening, it refuses connections), which nothing else can
    /// have taken meanwhile.
    pub async fn start_with(socket: TcpSocket, opts: SimOptions) -> std::io::Result<SimWorker> {
        let listener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(&opts, addr));
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let task = tokio::spawn(serve::accept_loop(
            listener,
            Arc::clone(&state),
            token.clone(),
            tracker.clone(),
        ));
        tracing::debug!(%addr, ?opts, "simulated worker started");
        Ok(SimWorker {
            addr,
            state,
            token,
            tracker,
            task: Some(task),
        })
    }

    /// The address the worker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a key sync: the keys held grow linearly from the current count to all keys over
    /// `duration`; the sync is complete when all are held. Ends any [`forget_keys`] lie.
    ///
    /// [`forget_keys`]: SimWorker::forget_keys
    pub fn begin_sync(&self, duration: Duration) {
        let now = Instant::now();
        let plan = self.state.plan.load();
        let from = self.state.held_in(&plan, now);
        let holding = if duration.is_zero() {
            Holding::Fixed(plan.total_keys)
        } else {
            Holding::Ramp {
                from,
                start: now,
                duration,
            }
        };
        self.state.set_plan(Plan::holding(&plan, holding));
    }

    /// Holds all keys at once: the sync is complete. Ends any [`forget_keys`] lie.
    ///
    /// [`forget_keys`]: SimWorker::forget_keys
    pub fn set_synced(&self) {
        let plan = self.state.plan.load();
        self.state
            .set_plan(Plan::holding(&plan, Holding::Fixed(plan.total_keys)));
    }

    /// Drops every key (every push request is answered `401`) while the probe keeps answering
    /// the report it gave just before (the complete report if the worker was synced): this
    /// models a worker that lost its key database between two probes.
    pub fn forget_keys(&self) {
        let now = Instant::now();
        let plan = self.state.plan.load();
        let report = self.state.report_in(&plan, now);
        self.state.set_plan(Plan {
            frozen_report: Some(report),
            ..Plan::holding(&plan, Holding::Fixed(0))
        });
    }

    /// Keeps only the first `keys` keys (a truncated key database) while the probe keeps
    /// claiming a complete sync at the same generation, with the truthful key count. Ended by
    /// [`set_synced`](SimWorker::set_synced) or [`begin_sync`](SimWorker::begin_sync).
    pub fn truncate_keys(&self, keys: u64) {
        let plan = self.state.plan.load();
        self.state.set_plan(Plan {
            claims_complete: true,
            ..Plan::holding(&plan, Holding::Fixed(keys))
        });
    }

    /// Adds `n` accounts to the active set (`key-{total} ..`) and advances the generation; a
    /// synced worker holds them at once.
    pub fn add_keys(&self, n: u64) {
        let plan = self.state.plan.load();
        let total = plan.total_keys.saturating_add(n);
        let holding = match plan.holding {
            Holding::Fixed(h) if h >= plan.total_keys => Holding::Fixed(total),
            other => other,
        };
        self.state.set_plan(Plan {
            holding,
            total_keys: total,
            generation: plan.generation.saturating_add(1),
            ..(**plan).clone()
        });
    }

    /// Removes account `key-{n}` from the active set (a cancellation) and advances the
    /// generation.
    pub fn remove_key(&self, n: u64) {
        let plan = self.state.plan.load();
        let mut removed = (*plan.removed).clone();
        removed.insert(n);
        self.state.set_plan(Plan {
            removed: Arc::new(removed),
            generation: plan.generation.saturating_add(1),
            ..(**plan).clone()
        });
    }

    /// The key-set generation the worker reports when its sync is complete.
    pub fn generation(&self) -> u64 {
        self.state.plan.load().generation
    }

    /// Sleeps `delay` before answering each probe (`Duration::ZERO`: no delay).
    pub fn set_probe_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.state.probe_delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// The most probes the worker was answering at once so far.
    pub fn max_concurrent_probes(&self) -> u64 {
        self.state.max_probes_in_flight.load(Ordering::Relaxed)
    }

    /// Forces the probe's answer to `status` and `body` (`Some`), or restores the real report
    /// (`None`). A status that is not a valid HTTP status is answered as `500`.
    pub fn set_probe_override(&self, body: Option<(u16, String)>) {
        match self.state.probe_override.lock() {
            Ok(mut guard) => *guard = body,
            Err(poisoned) => *poisoned.into_inner() = body,
        }
    }

    /// Answers every non-probe request with `status` (`Some`, for instance 500 or 503), or
    /// restores normal answers (`None`). A status that is not a valid HTTP status is ignored.
    pub fn set_status_override(&self, status: Option<u16>) {
        let code = status
            .filter(|s| StatusCode::from_u16(*s).is_ok())
            .map_or(0, u32::from);
        self.state.status_override.store(code, Ordering::Relaxed);
    }

    /// Sleeps `delay` before answering each non-probe request (`Duration::ZERO`: no delay).
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.state.delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Number of non-probe requests received.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Number of probe requests received.
    pub fn probes(&self) -> u64 {
        self.state.probes.load(Ordering::Relaxed)
    }

    /// Answers given to non-probe requests, as `(status, count)` pairs sorted by status, only
    /// statuses given at least once.
    pub fn status_counts(&self) -> Vec<(u16, u64)> {
        self.state
            .status_counts
            .iter()
            .enumerate()
            .filter_map(|(status, counter)| {
                let n = counter.load(Ordering::Relaxed);
                let status = u16::try_from(status).ok()?;
                (n > 0).then_some((status, n))
            })
            .collect()
    }

    /// Number of keys the worker holds now.
    pub fn held_keys(&self) -> u64 {
        self.state.held()
    }

    /// Stops the worker: stops accepting, closes the listener (connections are refused
    /// afterwards) and closes every open connection, then returns.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::warn!(addr = %self.addr, %err, "simulated worker accept task failed");
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
        tracing::debug!(addr = %self.addr, "simulated worker stopped");
    }
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

#[cfg(test)]
mod tests;
