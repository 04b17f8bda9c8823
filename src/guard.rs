//! The response guard: the second opinion's bookkeeping (contradiction window, retry budget)
//! and passive outlier detection from real traffic.
//!
//! A backend whose guarded answers (401/403) are contradicted by a ready peer `eject_after`
//! times within `eject_window` is ejected at once (reason `contradicted 401`).
//! Consecutive connect failures or consecutive 5xx answers from one backend eject it at once,
//! without waiting for its next probe; it comes back only through `rise` passing probes. A cap
//! (`max_ejection_percent`) keeps passive ejection from emptying a pool on its own: beyond it,
//! the probes decide. The counters are atomics on the backend; the pure threshold logic is
//! [`Streak`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;

use crate::backend::{Backend, State};
use crate::snapshot::{Pool, Shared};

/// Per-backend guard counters (atomics; touched on every answer).
#[derive(Debug, Default)]
pub struct GuardState {
    connect_failures: Streak,
    server_errors: Streak,
    /// Contradiction times; touched only when a second opinion disagrees (rare).
    contradictions: Mutex<ContradictionWindow>,
}

impl GuardState {
    /// Ends the failure runs (on admission: see `Backend::transition`).
    pub fn reset_runs(&self) {
        self.connect_failures.reset();
        self.server_errors.reset();
    }
}

/// Times of recent contradictions of one backend. Pure.
#[derive(Debug, Default)]
pub struct ContradictionWindow {
    at_ms: VecDeque<u64>,
}

impl ContradictionWindow {
    /// Records a contradiction at `now_ms`; true when `threshold` of them fall within `window`.
    pub fn record(&mut self, now_ms: u64, window: Duration, threshold: u32) -> bool {
        let window_ms = window.as_millis() as u64;
        while self
            .at_ms
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= window_ms)
        {
            self.at_ms.pop_front();
        }
        self.at_ms.push_back(now_ms);
        while self.at_ms.len() > threshold as usize {
            self.at_ms.pop_front();
        }
        self.at_ms.len() >= threshold as usize
    }

    /// Forgets the history (after an ejection: the backend starts afresh once re-admitted).
    pub fn clear(&mut self) {
        self.at_ms.clear();
    }
}

/// Seconds of history the retry budget keeps at most.
const BUDGET_SLOTS: usize = 60;

#[derive(Debug, Default)]
struct BudgetSlot {
    sec: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A pool's retry budget: retries (replays and connect retries) may add at most `ratio` of the
/// requests seen over the window, plus `min_per_sec` per second, so that a struggling fleet is
/// never hit with double load. Per-second slots of atomics; a slot is reset when its second
/// comes round again (a race there loses a few counts, which a budget can afford).
#[derive(Debug)]
pub struct RetryBudget {
    slots: Vec<BudgetSlot>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            slots: (0..BUDGET_SLOTS).map(|_| BudgetSlot::default()).collect(),
        }
    }
}

impl RetryBudget {
    fn slot(&self, now_sec: u64) -> &BudgetSlot {
        let slot = &self.slots[(now_sec % BUDGET_SLOTS as u64) as usize];
        let seen = slot.sec.load(Ordering::Relaxed);
        if seen != now_sec
            && slot
                .sec
                .compare_exchange(seen, now_sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts one client request.
    #[inline]
    pub fn deposit(&self, now_sec: u64) {
        self.slot(now_sec).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it allows one.
    pub fn try_withdraw(
        &self,
        now_sec: u64,
        ratio: f64,
        min_per_sec: u32,
        window: Duration,
    ) -> bool {
        let window_secs = window.as_secs().clamp(1, BUDGET_SLOTS as u64 - 1);
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let sec = s.sec.load(Ordering::Relaxed);
            if sec + window_secs > now_sec && sec <= now_sec {
                requests += s.requests.load(Ordering::Relaxed);
                retries += s.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = ratio * requests as f64 + f64::from(min_per_sec) * window_secs as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.slot(now_sec).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A run of consecutive failures. Pure apart from its atomic counter.
#[derive(Debug, Default)]
pub struct Streak(AtomicU32);

/// What one more failure means for a [`Streak`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// Below the threshold (or detection disabled).
    Below,
    /// The run just reached the threshold.
    Reached,
    /// The run is past the threshold: an ejection refused by the cap is tried again, quietly.
    Beyond,
}

impl Streak {
    /// Records a failure against `threshold` (0 disables).
    pub fn fail(&self, threshold: u32) -> Run {
        let n = self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if threshold == 0 || n < threshold {
            Run::Below
        } else if n == threshold {
            Run::Reached
        } else {
            Run::Beyond
        }
    }

    /// Records a success: the run is over.
    #[inline]
    pub fn reset(&self) {
        // Skip the write when already zero: avoids bouncing the cache line on the hot path.
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }
}

/// Counts an upstream answer for passive outlier detection.
pub fn record_answer(shared: &Shared, pool: &Pool, backend: &Backend, status: StatusCode) {
    backend.guard.connect_failures.reset();
    if status.is_server_error() {
        let threshold = pool.guard.consecutive_5xx;
        let run = backend.guard.server_errors.fail(threshold);
        if run != Run::Below {
            passive_eject(shared, pool, backend, Outlier::ServerErrors, threshold, run);
        }
    } else {
        backend.guard.server_errors.reset();
    }
}

/// Counts a connect failure for passive outlier detection.
pub fn record_connect_failure(shared: &Shared, pool: &Pool, backend: &Backend) {
    let threshold = pool.guard.consecutive_connect_failures;
    let run = backend.guard.connect_failures.fail(threshold);
    if run != Run::Below {
        passive_eject(
            shared,
            pool,
            backend,
            Outlier::ConnectFailures,
            threshold,
            run,
        );
    }
}

/// Charges `backend` a contradiction: a peer answered a request it had refused. Ejects it at
/// once after `eject_after` contradictions within `eject_window`.
pub fn record_contradiction(shared: &Shared, pool: &Pool, backend: &Backend) {
    let eject = {
        let mut w = backend
            .guard
            .contradictions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let hit = w.record(
            crate::clock::now_millis(),
            pool.guard.eject_window,
            pool.guard.eject_after,
        );
        if hit {
            w.clear();
        }
        hit
    };
    tracing::warn!(pool = %pool.name, backend = %backend.name, "guarded answer contradicted by a peer");
    if eject
        && backend.transition(
            &[State::Ready],
            State::Ejected,
            "contradicted 401",
            &shared.events,
        )
    {
        shared.metrics.ejection("contradicted");
    }
}

/// Whether ejecting one more backend keeps the pool within `max_ejection_percent`, counted
/// over the backends that are in service or passively out (`ready` + `ejected`), and never
/// takes out the last ready one: the probes alone may empty a pool.
pub fn within_ejection_cap(ready: usize, ejected: usize, max_percent: u32) -> bool {
    ready > 1 && (ejected + 1) * 100 <= (ready + ejected) * max_percent as usize
}

/// The passive detectors.
#[derive(Debug, Clone, Copy)]
enum Outlier {
    ConnectFailures,
    ServerErrors,
}

impl Outlier {
    /// The `reason` label of `syncgate_ejections_total`.
    fn label(self) -> &'static str {
        match self {
            Outlier::ConnectFailures => "connect_failures",
            Outlier::ServerErrors => "consecutive_5xx",
        }
    }

    fn reason(self, threshold: u32) -> String {
        match self {
            Outlier::ConnectFailures => format!("{threshold} consecutive connect failures"),
            Outlier::ServerErrors => format!("{threshold} consecutive 5xx answers"),
        }
    }
}

/// What the cap says of ejecting one backend now.
enum CapCheck {
    /// The backend is not ready: nothing to eject.
    NotReady,
    /// The cap holds it in.
    Capped { ready: usize, ejected: usize },
    /// It may go.
    Allowed,
}

fn cap_check(pool: &Pool, backend: &Backend) -> CapCheck {
    if backend.state() != State::Ready {
        return CapCheck::NotReady;
    }
    let count = |s: State| pool.backends.iter().filter(|b| b.state() == s).count();
    let (ready, ejected) = (count(State::Ready), count(State::Ejected));
    if within_ejection_cap(ready, ejected, pool.guard.max_ejection_percent) {
        CapCheck::Allowed
    } else {
        CapCheck::Capped { ready, ejected }
    }
}

fn passive_eject(
    shared: &Shared,
    pool: &Pool,
    backend: &Backend,
    outlier: Outlier,
    threshold: u32,
    run: Run,
) {
    // Checked first on atomics alone: while the cap holds a failing backend in, this runs on
    // each of its failures, so the usual answer ("still capped") takes no lock.
    match cap_check(pool, backend) {
        CapCheck::Allowed => {}
        CapCheck::NotReady => return,
        CapCheck::Capped { ready, ejected } => {
            if run == Run::Reached {
                tracing::warn!(pool = %pool.name, backend = %backend.name, reason = %outlier.reason(threshold), ready, ejected, "ejection cap reached; leaving it to the probes");
            }
            return;
        }
    }
    // Then again under a per-pool lock, so that two backends failing at once cannot both
    // pass the check before either is counted.
    let _decide = pool
        .stats
        .ejections
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if !matches!(cap_check(pool, backend), CapCheck::Allowed) {
        return;
    }
    let reason = outlier.reason(threshold);
    if backend.transition(&[State::Ready], State::Ejected, &reason, &shared.events) {
        shared.metrics.ejection(outlier.label());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streak_reaches_then_goes_beyond_threshold() {
        let s = Streak::default();
        assert_eq!(s.fail(3), Run::Below);
        assert_eq!(s.fail(3), Run::Below);
        assert_eq!(s.fail(3), Run::Reached);
        assert_eq!(s.fail(3), Run::Beyond);
        s.reset();
        assert_eq!(s.fail(3), Run::Below);
    }

    #[test]
    fn streak_zero_threshold_disables() {
        let s = Streak::default();
        for _ in 0..10 {
            assert_eq!(s.fail(0), Run::Below);
        }
    }

    #[test]
    fn contradictions_within_window_eject() {
        let mut w = ContradictionWindow::default();
        let win = Duration::from_secs(10);
        assert!(!w.record(1_000, win, 3));
        assert!(!w.record(2_000, win, 3));
        assert!(w.record(3_000, win, 3));
        let mut w = ContradictionWindow::default();
        assert!(!w.record(1_000, win, 3));
        assert!(!w.record(5_000, win, 3));
        // The first one has aged out of the window.
        assert!(!w.record(11_000, win, 3));
        assert!(w.record(12_000, win, 3));
    }

    #[test]
    fn retry_budget_allows_ratio_plus_minimum() {
        let b = RetryBudget::default();
        let win = Duration::from_secs(10);
        for _ in 0..100 {
            b.deposit(1000);
        }
        // 20% of 100 requests + 0 minimum = 20 retries.
        let granted = (0..50)
            .filter(|_| b.try_withdraw(1000, 0.2, 0, win))
            .count();
        assert_eq!(granted, 20);
        // The minimum alone: 1 per second over 10 s.
        let b = RetryBudget::default();
        let granted = (0..50)
            .filter(|_| b.try_withdraw(5000, 0.2, 1, win))
            .count();
        assert_eq!(granted, 10);
        // Old requests leave the window.
        let b = RetryBudget::default();
        for _ in 0..100 {
            b.deposit(1000);
        }
        assert!(!b.try_withdraw(1020, 0.2, 0, win));
    }

    #[test]
    fn ejection_cap() {
        // 4 in service, 50%: two may go, not a third.
        assert!(within_ejection_cap(4, 0, 50));
        assert!(within_ejection_cap(3, 1, 50));
        assert!(!within_ejection_cap(2, 2, 50));
        // Pending, draining and disabled backends do not widen the cap: 3 ready of 10
        // configured allow one ejection at 50%, not five.
        assert!(within_ejection_cap(3, 0, 50));
        assert!(!within_ejection_cap(2, 1, 50));
        // The last ready backend is never passively ejected, even at 100%.
        assert!(!within_ejection_cap(1, 0, 100));
        assert!(within_ejection_cap(2, 0, 100));
        assert!(!within_ejection_cap(1, 1, 100));
    }
}
