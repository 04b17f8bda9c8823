//! Passive outlier detection: what the request path's answers say about a backend.
//!
//! Consecutive connect failures or consecutive 5xx answers from one backend eject it at once,
//! without waiting for its next probe; it comes back only through `rise` passing probes. A
//! backend whose guarded answers (401/403) are contradicted by a ready peer `eject_after`
//! times within `eject_window` is ejected at once too (reason `contradicted 401`), and so is,
//! within the cap, one that gives them for credentials accepted at the current key-set
//! generation. A cap
//! (`max_ejection_percent`) keeps passive ejection from emptying a pool on its own: beyond it,
//! the probes decide. The counters are [`crate::counters::OutlierCounters`] on the backend;
//! this module holds the policy, which needs the pool.

use http::StatusCode;

use crate::backend::{Backend, State};
use crate::counters::Run;
use crate::metrics::EjectionCause;
use crate::snapshot::{Pool, Shared};

/// Counts an upstream answer: the backend's answers by class, and passive outlier detection.
#[inline]
pub fn record_answer(shared: &Shared, pool: &Pool, backend: &Backend, status: StatusCode) {
    backend.answers.record(Some(status.as_u16()));
    let threshold = pool.guard.consecutive_5xx;
    let run = backend.outlier.answer(status.is_server_error(), threshold);
    if run != Run::Below {
        passive_eject(shared, pool, backend, Outlier::ServerErrors, threshold, run);
    }
}

/// Counts a connect failure: the backend's answers (as an error) and connect failures, and
/// passive outlier detection.
pub fn record_connect_failure(shared: &Shared, pool: &Pool, backend: &Backend) {
    backend.answers.record(None);
    backend
        .connect_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let threshold = pool.guard.consecutive_connect_failures;
    let run = backend.outlier.connect_failure(threshold);
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

/// What a backend is charged for, by the response guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// A ready peer answered a request it had refused: ejected at once after `eject_after`
    /// within `eject_window`, cap or not (a contradicted 401 is the fault syncgate exists to
    /// catch).
    Contradicted,
    /// It gave a guarded answer for a credential answered 2xx at the current key-set
    /// generation. Counted in the same window, but ejected only within the ejection cap: the
    /// answer may also be a genuine cancellation whose new generation the probes have not
    /// reported yet, and that must not empty a pool. When the keys are really gone, the
    /// probes' collapse rule ejects beyond the cap.
    AcceptedCredential,
}

/// Charges `backend` for a guarded answer the guard did not pass on; ejects it once
/// `eject_after` charges fall within `eject_window` (see [`Charge`] for the cap).
pub fn charge(shared: &Shared, pool: &Pool, backend: &Backend, charge: Charge) {
    let eject = backend.outlier.contradiction(
        crate::clock::now_millis(),
        pool.guard.eject_window,
        pool.guard.eject_after,
    );
    match charge {
        Charge::Contradicted => {
            backend.outlier.count_contradicted();
            tracing::warn!(pool = %pool.name, backend = %backend.name, "guarded answer contradicted by a peer");
            if eject
                && backend.transition(
                    &[State::Ready],
                    State::Ejected,
                    "contradicted 401",
                    &shared.events,
                )
            {
                backend.metrics.ejected(EjectionCause::Contradicted);
            }
        }
        Charge::AcceptedCredential => {
            tracing::warn!(pool = %pool.name, backend = %backend.name, "guarded answer for a credential accepted at the current generation");
            if eject {
                let threshold = pool.guard.eject_after;
                passive_eject(
                    shared,
                    pool,
                    backend,
                    Outlier::AcceptedCredentials,
                    threshold,
                    Run::Reached,
                );
            }
        }
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
    AcceptedCredentials,
}

impl Outlier {
    /// The `cause` label of `syncgate_ejections_total`.
    fn cause(self) -> EjectionCause {
        match self {
            Outlier::ConnectFailures => EjectionCause::ConnectFailures,
            Outlier::ServerErrors => EjectionCause::Consecutive5xx,
            Outlier::AcceptedCredentials => EjectionCause::AcceptedAtGeneration,
        }
    }

    fn reason(self, threshold: u32) -> String {
        match self {
            Outlier::ConnectFailures => format!("{threshold} consecutive connect failures"),
            Outlier::ServerErrors => format!("{threshold} consecutive 5xx answers"),
            Outlier::AcceptedCredentials => {
                format!("{threshold} 401s for credentials accepted at the current generation")
            }
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
    // Then again under the pool's ejection lock, so that two backends failing at once cannot
    // both pass the check before either is counted.
    let _decide = pool.ejection_lock.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(cap_check(pool, backend), CapCheck::Allowed) {
        return;
    }
    let reason = outlier.reason(threshold);
    if backend.transition(&[State::Ready], State::Ejected, &reason, &shared.events) {
        backend.metrics.ejected(outlier.cause());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
