//! Counters and histograms, kept as plain atomics so the request path takes no lock and
//! allocates nothing for them.
//!
//! Per-backend ones live in [`crate::backend::Backend`] ([`BackendMetrics`], and its answer
//! counters), per-pool ones in [`PoolStats`] (kept by pool name across reloads, see
//! [`crate::snapshot::Shared`]), process-wide ones in [`Metrics`]; [`process`] reads the
//! process's own resource use from `/proc`. The admin endpoint renders all of them in the
//! Prometheus text format at scrape time.

mod backend;
pub mod process;

pub use backend::{BackendMetrics, EjectionCause};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;

/// Per-status-class answer counters: 1xx..5xx, plus local errors (no upstream answer).
#[derive(Debug, Default)]
pub struct StatusCounters {
    classes: [AtomicU64; 6],
}

impl StatusCounters {
    /// Counts one answer with `status`, or a local failure when `None`.
    pub fn record(&self, status: Option<u16>) {
        let idx = match status {
            Some(s @ 100..=599) => (s / 100) as usize - 1,
            _ => 5,
        };
        self.classes[idx].fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, count)` for 1xx..5xx and `error`.
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        const LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];
        let mut out = [("", 0); 6];
        for (i, label) in LABELS.iter().enumerate() {
            out[i] = (label, self.classes[i].load(Ordering::Relaxed));
        }
        out
    }
}

/// Histogram bucket upper bounds, seconds. They reach well past the default
/// `request_timeout` (30 s), so that requests answered `504` land in a bucket of their own
/// rather than only in `+Inf`; a `request_timeout` above 300 s puts its timeouts in `+Inf`.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// A fixed-bucket latency histogram of atomics.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative bucket counts; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        // The first bound at or above `secs` (the +Inf slot past the last): the buckets are
        // sorted.
        let idx = LATENCY_BUCKETS.partition_point(|b| *b < secs);
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// `(sum seconds, count, cumulative bucket counts)` for rendering.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(bound, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        (
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            self.count.load(Ordering::Relaxed),
            buckets,
        )
    }
}

/// Outcomes of the response guard's second opinion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardOutcome {
    /// A guarded answer was replayed on another backend.
    Replayed,
    /// The second backend gave a guarded answer too; the client got it.
    Confirmed,
    /// The second backend disagreed; the client got its answer.
    Contradicted,
    /// No other ready backend: the guarded answer passed.
    NoPeer,
    /// The body was too large to keep: the guarded answer passed.
    TooLarge,
    /// The retry budget was spent before a second opinion could be asked: the client got
    /// `503` with `Retry-After`, never the unconfirmed answer. (Connect retries refused by the
    /// budget are counted apart, as `syncgate_retries_refused_total`.)
    BudgetSpent,
    /// Other ready backends existed but none could give an opinion (unreachable, 5xx, a broken
    /// answer, or the first answer too large to keep): the client got `503` with `Retry-After`.
    Unconfirmed,
    /// The credential's guarded answer was confirmed before, at the current key-set
    /// generation: the answer passed without a second opinion.
    Remembered,
    /// The guarded answer would have reached the client (confirmed, no peer, body too large)
    /// for a credential answered 2xx at the current key-set generation, which cannot have
    /// become invalid: the client got `503` with `Retry-After`, and the backends that gave the
    /// answer were charged.
    AcceptedAtGeneration,
}

impl GuardOutcome {
    /// All outcomes, in metric order.
    pub const ALL: [GuardOutcome; 9] = [
        GuardOutcome::Replayed,
        GuardOutcome::Confirmed,
        GuardOutcome::Contradicted,
        GuardOutcome::NoPeer,
        GuardOutcome::TooLarge,
        GuardOutcome::BudgetSpent,
        GuardOutcome::Unconfirmed,
        GuardOutcome::Remembered,
        GuardOutcome::AcceptedAtGeneration,
    ];

    /// The `outcome` label of `syncgate_guard_outcomes_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardOutcome::Replayed => "replayed",
            GuardOutcome::Confirmed => "confirmed",
            GuardOutcome::Contradicted => "contradicted",
            GuardOutcome::NoPeer => "no_peer",
            GuardOutcome::TooLarge => "too_large",
            GuardOutcome::BudgetSpent => "budget_spent",
            GuardOutcome::Unconfirmed => "unconfirmed",
            GuardOutcome::Remembered => "remembered",
            GuardOutcome::AcceptedAtGeneration => "accepted_at_generation",
        }
    }
}

/// Per-pool counters, surviving reloads.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Client answers by status class.
    pub answers: StatusCounters,
    /// Time from request start to response headers.
    pub latency: Histogram,
    /// 503s answered because no backend was ready.
    pub no_ready: AtomicU64,
    /// Guard outcomes, indexed like [`GuardOutcome::ALL`].
    pub guard_outcomes: [AtomicU64; GuardOutcome::ALL.len()],
    /// Connect-failure retries made.
    pub retries: AtomicU64,
    /// Connect-failure retries the retry budget refused (the client got `502`).
    pub retries_refused: AtomicU64,
    /// Requests answered `504` because `request_timeout` passed.
    pub timeouts: AtomicU64,
    /// Requests whose client went away before their answer was ready.
    pub client_aborts: AtomicU64,
}

impl PoolStats {
    /// Records one client answer.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.answers.record(Some(status.as_u16()));
        self.latency.observe(elapsed);
    }

    /// A request being answered: counted as a client abort if it is dropped before
    /// [`Answering::answered`] (hyper drops a request's future when its client goes away).
    #[inline]
    pub fn answering(&self) -> Answering<'_> {
        Answering {
            stats: self,
            done: false,
        }
    }

    /// Counts a guard outcome.
    pub fn guard_outcome(&self, outcome: GuardOutcome) {
        let idx = GuardOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.guard_outcomes[idx].fetch_add(1, Ordering::Relaxed);
    }
}

/// A request of a pool on its way to an answer (see [`PoolStats::answering`]).
#[derive(Debug)]
pub struct Answering<'a> {
    stats: &'a PoolStats,
    done: bool,
}

impl Answering<'_> {
    /// The answer is ready: not an abort.
    #[inline]
    pub fn answered(mut self) {
        self.done = true;
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.client_aborts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Client connections: open now, opened since start, and parked now.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicU64,
    opened: AtomicU64,
    parked: AtomicU64,
}

impl Connections {
    /// Counts a client connection open until the returned value drops.
    pub fn opened(&self) -> OpenConnection<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.opened.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// Counts an idle HTTP/1.1 connection parked (hyper's buffers let go) until the returned
    /// value drops.
    pub fn parked(&self) -> ParkedConnection<'_> {
        self.parked.fetch_add(1, Ordering::Relaxed);
        ParkedConnection(self)
    }

    /// `(open now, opened since start)`.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.open.load(Ordering::Relaxed),
            self.opened.load(Ordering::Relaxed),
        )
    }

    /// Parked connections now.
    pub fn parked_now(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
}

/// A parked client connection (see [`Connections::parked`]).
#[derive(Debug)]
pub struct ParkedConnection<'a>(&'a Connections);

impl Drop for ParkedConnection<'_> {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open client connection (see [`Connections::opened`]).
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a Connections);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Config reloads that succeeded.
    pub reloads_ok: AtomicU64,
    /// Config reloads that failed (the old config stayed).
    pub reloads_failed: AtomicU64,
    /// Requests that matched no route (answered `404`): the `pool=""` series of the request
    /// families.
    pub unrouted: PoolStats,
    /// Client connections.
    pub connections: Connections,
    /// Discovery resolutions by pool, source and result (kept after a source leaves).
    resolutions: Mutex<BTreeMap<ResolutionKey, u64>>,
    /// How long discover sources took to resolve (every resolution, failed ones too).
    pub discovery_resolve: Histogram,
    /// How long a changed resolution took to install: diff, snapshot build and swap, probers.
    pub discovery_install: Histogram,
}

/// `(pool, source, result)` of a discovery resolution.
pub type ResolutionKey = (String, String, &'static str);

impl Metrics {
    /// Counts one resolution of a discover source (every `interval` per source: a lock is
    /// fine).
    pub fn resolution(&self, pool: &str, source: &str, result: &'static str) {
        let mut m = self.resolutions.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((pool.to_owned(), source.to_owned(), result))
            .or_default() += 1;
    }

    /// Resolutions by `(pool, source, result)`, sorted.
    pub fn resolutions(&self) -> Vec<(ResolutionKey, u64)> {
        let m = self.resolutions.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        h.observe(Duration::from_secs(45));
        h.observe(Duration::from_secs(3600));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 5);
        assert!((sum - 3655.0031).abs() < 1e-6);
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 2));
        // A bound is inclusive: 10 s lands in the 10 s bucket.
        assert!(buckets.contains(&(10.0, 3)));
        assert!(buckets.contains(&(60.0, 4)));
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 5));
    }

    #[test]
    fn the_buckets_reach_past_the_default_request_timeout() {
        let default_timeout = 30.0;
        assert!(LATENCY_BUCKETS.iter().any(|b| *b > default_timeout));
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]), "sorted");
    }

    #[test]
    fn a_request_dropped_before_its_answer_is_a_client_abort() {
        let stats = PoolStats::default();
        stats.answering().answered();
        drop(stats.answering());
        assert_eq!(stats.client_aborts.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn open_connections_are_counted_until_they_close() {
        let c = Connections::default();
        let a = c.opened();
        let b = c.opened();
        assert_eq!(c.counts(), (2, 2));
        drop(a);
        drop(b);
        assert_eq!(c.counts(), (0, 2));
    }

    #[test]
    fn status_classes() {
        let c = StatusCounters::default();
        c.record(Some(200));
        c.record(Some(204));
        c.record(Some(503));
        c.record(None);
        let s = c.snapshot();
        assert_eq!(s[1], ("2xx", 2));
        assert_eq!(s[4], ("5xx", 1));
        assert_eq!(s[5], ("error", 1));
    }
}
