//! The response guard's passive side: outlier detection from real traffic.
//!
//! Consecutive connect failures or consecutive 5xx answers from one backend eject it at once,
//! without waiting for its next probe; it comes back only through `rise` passing probes. A cap
//! (`max_ejection_percent`) keeps passive ejection from emptying a pool on its own: beyond it,
//! the probes decide. The counters are atomics on the backend; the pure threshold logic is
//! [`Streak`].

use std::sync::atomic::{AtomicU32, Ordering};

use http::StatusCode;

use crate::backend::{Backend, State};
use crate::snapshot::{Pool, Shared};

/// Per-backend guard counters (atomics; touched on every answer).
#[derive(Debug, Default)]
pub struct GuardState {
    connect_failures: Streak,
    server_errors: Streak,
}

/// A run of consecutive failures. Pure apart from its atomic counter.
#[derive(Debug, Default)]
pub struct Streak(AtomicU32);

impl Streak {
    /// Records a failure; true exactly when the run reaches `threshold` (0 disables).
    pub fn fail(&self, threshold: u32) -> bool {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        threshold != 0 && n == threshold
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
        if backend.guard.server_errors.fail(pool.guard.consecutive_5xx) {
            passive_eject(
                shared,
                pool,
                backend,
                "consecutive_5xx",
                &format!("{} consecutive 5xx answers", pool.guard.consecutive_5xx),
            );
        }
    } else {
        backend.guard.server_errors.reset();
    }
}

/// Counts a connect failure for passive outlier detection.
pub fn record_connect_failure(shared: &Shared, pool: &Pool, backend: &Backend) {
    if backend
        .guard
        .connect_failures
        .fail(pool.guard.consecutive_connect_failures)
    {
        passive_eject(
            shared,
            pool,
            backend,
            "connect_failures",
            &format!(
                "{} consecutive connect failures",
                pool.guard.consecutive_connect_failures
            ),
        );
    }
}

/// Whether ejecting one more backend keeps the pool within `max_ejection_percent`.
pub fn within_ejection_cap(ejected: usize, total: usize, max_percent: u32) -> bool {
    (ejected + 1) * 100 <= total * max_percent as usize
}

fn passive_eject(
    shared: &Shared,
    pool: &Pool,
    backend: &Backend,
    label: &'static str,
    reason: &str,
) {
    let ejected = pool
        .backends
        .iter()
        .filter(|b| b.state() == State::Ejected)
        .count();
    if !within_ejection_cap(
        ejected,
        pool.backends.len(),
        pool.guard.max_ejection_percent,
    ) {
        tracing::warn!(pool = %pool.name, backend = %backend.name, reason = %reason, "ejection cap reached; leaving it to the probes");
        return;
    }
    if backend.transition(&[State::Ready], State::Ejected, reason, &shared.events) {
        shared.metrics.ejection(label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streak_fires_once_at_threshold() {
        let s = Streak::default();
        assert!(!s.fail(3));
        assert!(!s.fail(3));
        assert!(s.fail(3));
        assert!(!s.fail(3));
        s.reset();
        assert!(!s.fail(3));
    }

    #[test]
    fn streak_zero_threshold_disables() {
        let s = Streak::default();
        for _ in 0..10 {
            assert!(!s.fail(0));
        }
    }

    #[test]
    fn ejection_cap() {
        assert!(within_ejection_cap(0, 4, 50));
        assert!(within_ejection_cap(1, 4, 50));
        assert!(!within_ejection_cap(2, 4, 50));
        assert!(!within_ejection_cap(0, 1, 50));
        assert!(within_ejection_cap(0, 1, 100));
    }
}
