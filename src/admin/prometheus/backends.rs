//! The per-backend families, one function each, over any slice of the scrape's backends: a
//! scrape writes each family a slice at a time ([`super::scrape`]), so that the text of
//! thousands of backends is never held whole.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::DescriptorEncoder;

use super::families::{counters, gauges, histograms, Esc};
use crate::backend::{Backend, KeySync, State};

/// Some of a scrape's backends, each with its key-sync report as the scrape began.
pub(super) struct Slice<'a> {
    pub(super) backends: &'a [Arc<Backend>],
    /// `reports[i]` is `backends[i]`'s, read once per scrape: the three key-sync families,
    /// written at different times, show the same reports.
    pub(super) reports: &'a [Option<KeySync>],
}

impl Slice<'_> {
    /// The backends with a report (a backend without one, not probed yet or probed with
    /// `contract = "status"`, has no series in the key-sync families).
    fn reported(&self) -> impl Iterator<Item = (&Arc<Backend>, &KeySync)> {
        self.backends
            .iter()
            .zip(self.reports)
            .filter_map(|(b, k)| Some((b, k.as_ref()?)))
    }
}

/// Writes one family's series for some backends (its `# HELP`, `# TYPE` and `# UNIT` lines
/// first).
pub(super) type Family = fn(&mut DescriptorEncoder, &Slice<'_>) -> Result<(), std::fmt::Error>;

/// Every per-backend family, in the order a scrape writes them.
pub(super) const FAMILIES: [Family; 13] = [
    requests,
    connect_failures,
    state,
    in_flight,
    latency,
    sent_bytes,
    received_bytes,
    keys,
    key_generation,
    sync_complete,
    probes,
    probe_duration,
    ejections,
];

/// `[("pool", …), ("backend", …)]` of a backend.
fn pool_backend(b: &Backend) -> [(&'static str, Esc<'_>); 2] {
    [("pool", Esc(&b.pool)), ("backend", Esc(&b.name))]
}

fn requests(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "syncgate_backend_requests",
        "Requests forwarded to a backend, by answer status class (error: no answer).",
        slice.backends.iter().flat_map(|b| {
            b.answers.snapshot().map(|(class, n)| {
                (
                    [
                        ("pool", Esc(&b.pool)),
                        ("backend", Esc(&b.name)),
                        ("class", Esc(class)),
                    ],
                    n,
                )
            })
        }),
    )
}

fn connect_failures(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "syncgate_backend_connect_failures",
        "Connections to a backend that failed (refused, reset before sending, timeout).",
        slice
            .backends
            .iter()
            .map(|b| (pool_backend(b), b.connect_failures.load(Ordering::Relaxed))),
    )
}

fn state(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    gauges(
        e,
        "syncgate_backend_state",
        "Backend lifecycle state: 1 for the current state, 0 for the others.",
        slice.backends.iter().flat_map(|b| {
            let current = b.state();
            State::ALL.iter().map(move |s| {
                (
                    [
                        ("pool", Esc(&b.pool)),
                        ("backend", Esc(&b.name)),
                        ("state", Esc(s.as_str())),
                    ],
                    u64::from(*s == current),
                )
            })
        }),
    )
}

fn in_flight(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    gauges(
        e,
        "syncgate_backend_in_flight",
        "Requests forwarded to a backend and not finished yet.",
        slice
            .backends
            .iter()
            .map(|b| (pool_backend(b), b.in_flight())),
    )
}

fn latency(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    histograms(
        e,
        "syncgate_backend_latency",
        "Time from sending a request to a backend until its response headers arrived (every answered attempt, second opinions included).",
        slice
            .backends
            .iter()
            .map(|b| (pool_backend(b), &b.metrics.upstream_latency)),
    )
}

fn sent_bytes(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "syncgate_backend_sent_bytes",
        "Request body bytes sent to a backend.",
        slice
            .backends
            .iter()
            .map(|b| (pool_backend(b), b.metrics.bytes().0)),
    )
}

fn received_bytes(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "syncgate_backend_received_bytes",
        "Response body bytes received from a backend.",
        slice
            .backends
            .iter()
            .map(|b| (pool_backend(b), b.metrics.bytes().1)),
    )
}

fn keys(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    gauges(
        e,
        "syncgate_backend_keys",
        "Active account keys the backend holds, as its last key-sync report said.",
        slice.reported().map(|(b, k)| (pool_backend(b), k.keys)),
    )
}

fn key_generation(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    gauges(
        e,
        "syncgate_backend_key_generation",
        "Generation of the key set the backend has loaded, as its last key-sync report said.",
        slice
            .reported()
            .map(|(b, k)| (pool_backend(b), k.generation)),
    )
}

fn sync_complete(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    gauges(
        e,
        "syncgate_backend_sync_complete",
        "1 when the backend's last key-sync report said its sync is complete, else 0.",
        slice
            .reported()
            .map(|(b, k)| (pool_backend(b), u64::from(k.complete))),
    )
}

fn probes(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "syncgate_probes",
        "Readiness probes, by pool, backend and result (ok or failed).",
        slice.backends.iter().flat_map(|b| {
            let (ok, failed) = b.metrics.probes();
            [("ok", ok), ("failed", failed)].map(|(result, n)| {
                (
                    [
                        ("pool", Esc(&b.pool)),
                        ("backend", Esc(&b.name)),
                        ("result", Esc(result)),
                    ],
                    n,
                )
            })
        }),
    )
}

fn probe_duration(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    histograms(
        e,
        "syncgate_probe_duration",
        "Time one readiness probe took (failed ones included; a timed-out probe counts its timeout).",
        slice
            .backends
            .iter()
            .map(|b| (pool_backend(b), &b.metrics.probe_duration)),
    )
}

fn ejections(e: &mut DescriptorEncoder, slice: &Slice<'_>) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "syncgate_ejections",
        "Backends taken out of rotation (ready to ejected), by pool, backend and cause: decided by the probes or by the request path.",
        slice.backends.iter().flat_map(|b| {
            b.metrics.ejections().map(|(cause, n)| {
                (
                    [
                        ("pool", Esc(&b.pool)),
                        ("backend", Esc(&b.name)),
                        ("cause", Esc(cause.as_str())),
                    ],
                    n,
                )
            })
        }),
    )
}
