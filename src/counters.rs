//! The counters behind passive outlier detection and the retry budget: plain atomics with the
//! threshold arithmetic, no policy. What a count means for a backend (eject it? within the
//! cap?) is decided in [`crate::outlier`], which knows the pool; these types know nothing
//! above themselves, so that [`crate::backend::Backend`] can hold them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::coarse_secs;

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

/// One backend's outlier-detection counters: its runs of connect failures and of 5xx answers
/// (atomics, touched on every answer) and its recent contradictions (touched only when a
/// second opinion disagrees, which is rare).
#[derive(Debug, Default)]
pub struct OutlierCounters {
    connect_failures: Streak,
    server_errors: Streak,
    contradictions: Mutex<ContradictionWindow>,
    /// Guarded answers of this backend that a peer contradicted, ever (for the admin API).
    contradicted: AtomicU64,
}

impl OutlierCounters {
    /// Counts an upstream answer: it ends the connect-failure run, and extends the 5xx run
    /// (against `consecutive_5xx`) or ends it.
    #[inline]
    pub fn answer(&self, server_error: bool, consecutive_5xx: u32) -> Run {
        self.connect_failures.reset();
        if server_error {
            self.server_errors.fail(consecutive_5xx)
        } else {
            self.server_errors.reset();
            Run::Below
        }
    }

    /// Counts a connect failure against `threshold`.
    pub fn connect_failure(&self, threshold: u32) -> Run {
        self.connect_failures.fail(threshold)
    }

    /// Counts a contradiction at `now_ms`; true when it is the `threshold`th within `window`
    /// (the history is then forgotten, so a re-admitted backend starts afresh).
    pub fn contradiction(&self, now_ms: u64, window: Duration, threshold: u32) -> bool {
        let mut w = self
            .contradictions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let hit = w.record(now_ms, window, threshold);
        if hit {
            w.clear();
        }
        hit
    }

    /// Counts a guarded answer that a peer contradicted (the charge itself is
    /// [`OutlierCounters::contradiction`]).
    pub fn count_contradicted(&self) {
        self.contradicted.fetch_add(1, Ordering::Relaxed);
    }

    /// Guarded answers that a peer contradicted so far.
    pub fn contradicted(&self) -> u64 {
        self.contradicted.load(Ordering::Relaxed)
    }

    /// Ends the failure runs (on admission: see `Backend::transition`).
    pub fn reset_runs(&self) {
        self.connect_failures.reset();
        self.server_errors.reset();
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

/// The requests and retries a pool saw per second, over the last minute: the history behind
/// its [`RetryBudget`], kept across reloads. Per-second slots of atomics; a slot is reset when
/// its second comes round again (a race there loses a few counts, which a budget can afford).
/// Time is a parameter, so the arithmetic is tested without a clock.
#[derive(Debug)]
pub struct BudgetLedger {
    slots: Vec<BudgetSlot>,
}

impl Default for BudgetLedger {
    fn default() -> Self {
        BudgetLedger {
            slots: (0..BUDGET_SLOTS).map(|_| BudgetSlot::default()).collect(),
        }
    }
}

impl BudgetLedger {
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

    /// Takes one retry if `ratio` of the requests over `window`, plus `min_per_sec` per second,
    /// leaves room for it.
    pub fn try_withdraw(
        &self,
        now_sec: u64,
        ratio: f64,
        min_per_sec: u32,
        window: Duration,
    ) -> bool {
        let (allowed, retries) = self.allowance(now_sec, ratio, min_per_sec, window);
        if (retries + 1) as f64 > allowed {
            return false;
        }
        self.slot(now_sec).retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// How many more retries the budget allows now (what `try_withdraw` would grant in a row).
    pub fn remaining(&self, now_sec: u64, ratio: f64, min_per_sec: u32, window: Duration) -> u64 {
        let (allowed, retries) = self.allowance(now_sec, ratio, min_per_sec, window);
        // Float to integer casts saturate; a negative room is 0.
        (allowed - retries as f64).floor().max(0.0) as u64
    }

    /// `(retries allowed, retries taken)` over the window ending at `now_sec`.
    fn allowance(
        &self,
        now_sec: u64,
        ratio: f64,
        min_per_sec: u32,
        window: Duration,
    ) -> (f64, u64) {
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
        (allowed, retries)
    }
}

/// A pool's retry budget: retries and replays (connect retries, second opinions) may add at
/// most `ratio` of the requests seen over `window`, plus `min_per_sec` per second, so that a
/// struggling fleet is never hit with double load. The settings come from the running config
/// (`[pools.NAME.guard] retry_budget_*`); the [`BudgetLedger`] outlives reloads.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ledger: Arc<BudgetLedger>,
    ratio: f64,
    min_per_sec: u32,
    window: Duration,
}

impl RetryBudget {
    /// A budget over `ledger` with these settings.
    pub fn new(
        ledger: Arc<BudgetLedger>,
        ratio: f64,
        min_per_sec: u32,
        window: Duration,
    ) -> RetryBudget {
        RetryBudget {
            ledger,
            ratio,
            min_per_sec,
            window,
        }
    }

    /// Counts one client request.
    #[inline]
    pub fn deposit(&self) {
        self.ledger.deposit(coarse_secs());
    }

    /// Retries and replays the budget allows now (the `syncgate_retry_budget_remaining` gauge).
    pub fn remaining(&self) -> u64 {
        self.ledger
            .remaining(coarse_secs(), self.ratio, self.min_per_sec, self.window)
    }

    /// Takes one retry or replay from the budget if it allows one.
    pub fn try_spend(&self) -> bool {
        self.ledger
            .try_withdraw(coarse_secs(), self.ratio, self.min_per_sec, self.window)
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
        let b = BudgetLedger::default();
        let win = Duration::from_secs(10);
        for _ in 0..100 {
            b.deposit(1000);
        }
        // 20% of 100 requests + 0 minimum = 20 retries.
        assert_eq!(b.remaining(1000, 0.2, 0, win), 20);
        let granted = (0..50)
            .filter(|_| b.try_withdraw(1000, 0.2, 0, win))
            .count();
        assert_eq!(granted, 20);
        assert_eq!(b.remaining(1000, 0.2, 0, win), 0);
        // The minimum alone: 1 per second over 10 s.
        let b = BudgetLedger::default();
        let granted = (0..50)
            .filter(|_| b.try_withdraw(5000, 0.2, 1, win))
            .count();
        assert_eq!(granted, 10);
        // Old requests leave the window.
        let b = BudgetLedger::default();
        for _ in 0..100 {
            b.deposit(1000);
        }
        assert!(!b.try_withdraw(1020, 0.2, 0, win));
    }
}
