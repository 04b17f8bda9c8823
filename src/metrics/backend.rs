//! One backend's counters and histograms: probes, ejections by cause, upstream latency, body
//! bytes.
//!
//! They live on the [`Backend`](crate::backend::Backend) state object, so they last as long as
//! the backend does and leave `/metrics` with it (a removed or vanished backend once it is
//! forgotten). Atomics only: the request path adds to them without a lock or an allocation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Histogram;

/// Why a backend was ejected: the `cause` label of `syncgate_ejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionCause {
    /// `fall` probes in a row failed: refused, timed out, a non-2xx status, a report that does
    /// not parse, or a fleet check (stale generation, too few keys).
    ProbeFailed,
    /// The worker's own report said its key sync is incomplete (out at the first such probe).
    SyncIncomplete,
    /// The probe saw its keys collapse at an unchanged key-set generation (out at once).
    KeyCollapse,
    /// Consecutive connect failures on the request path (passive).
    ConnectFailures,
    /// Consecutive 5xx answers on the request path (passive).
    Consecutive5xx,
    /// Guarded answers (401/403) contradicted by a ready peer.
    Contradicted,
    /// Guarded answers for credentials accepted at the current key-set generation (passive).
    AcceptedAtGeneration,
}

impl EjectionCause {
    /// Every cause, in metric order.
    pub const ALL: [EjectionCause; 7] = [
        EjectionCause::ProbeFailed,
        EjectionCause::SyncIncomplete,
        EjectionCause::KeyCollapse,
        EjectionCause::ConnectFailures,
        EjectionCause::Consecutive5xx,
        EjectionCause::Contradicted,
        EjectionCause::AcceptedAtGeneration,
    ];

    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionCause::ProbeFailed => "probe_failed",
            EjectionCause::SyncIncomplete => "sync_incomplete",
            EjectionCause::KeyCollapse => "key_collapse",
            EjectionCause::ConnectFailures => "connect_failures",
            EjectionCause::Consecutive5xx => "consecutive_5xx",
            EjectionCause::Contradicted => "contradicted",
            EjectionCause::AcceptedAtGeneration => "accepted_at_generation",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A backend's metrics.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Time from sending a request to the backend until its response headers arrived, for
    /// every attempt it answered (second opinions included).
    pub upstream_latency: Histogram,
    /// How long each probe took, failed ones included (a timed-out probe counts its timeout).
    pub probe_duration: Histogram,
    probes_ok: AtomicU64,
    probes_failed: AtomicU64,
    ejections: [AtomicU64; EjectionCause::ALL.len()],
    sent_bytes: AtomicU64,
    received_bytes: AtomicU64,
}

impl BackendMetrics {
    /// Counts one probe that took `took`.
    pub fn probed(&self, ok: bool, took: Duration) {
        let c = if ok {
            &self.probes_ok
        } else {
            &self.probes_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.probe_duration.observe(took);
    }

    /// Probes so far, `(passed, failed)`.
    pub fn probes(&self) -> (u64, u64) {
        (
            self.probes_ok.load(Ordering::Relaxed),
            self.probes_failed.load(Ordering::Relaxed),
        )
    }

    /// Counts one ejection (call it only for a transition that happened).
    pub fn ejected(&self, cause: EjectionCause) {
        self.ejections[cause.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Ejections so far, by cause, every cause listed.
    pub fn ejections(&self) -> impl Iterator<Item = (EjectionCause, u64)> + '_ {
        EjectionCause::ALL
            .iter()
            .map(|c| (*c, self.ejections[c.index()].load(Ordering::Relaxed)))
    }

    /// Counts request body bytes sent to the backend.
    #[inline]
    pub fn sent(&self, bytes: u64) {
        if bytes > 0 {
            self.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts response body bytes received from the backend.
    #[inline]
    pub fn received(&self, bytes: usize) {
        self.received_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Body bytes so far, `(sent, received)`.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.sent_bytes.load(Ordering::Relaxed),
            self.received_bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_index_their_own_counter() {
        let m = BackendMetrics::default();
        m.ejected(EjectionCause::KeyCollapse);
        m.ejected(EjectionCause::KeyCollapse);
        m.ejected(EjectionCause::Contradicted);
        let counts: Vec<(&str, u64)> = m.ejections().map(|(c, n)| (c.as_str(), n)).collect();
        assert_eq!(counts.len(), EjectionCause::ALL.len());
        assert!(counts.contains(&("key_collapse", 2)));
        assert!(counts.contains(&("contradicted", 1)));
        assert!(counts.contains(&("probe_failed", 0)));
        for (i, c) in EjectionCause::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?} is out of order");
        }
    }

    #[test]
    fn probes_are_counted_and_timed() {
        let m = BackendMetrics::default();
        m.probed(true, Duration::from_millis(3));
        m.probed(false, Duration::from_secs(2));
        assert_eq!(m.probes(), (1, 1));
        let (_, count, _) = m.probe_duration.snapshot();
        assert_eq!(count, 2);
    }
}
