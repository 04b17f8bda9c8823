//! `GET /metrics`: a `prometheus-client` [`Collector`](prometheus_client::collector::Collector)
//! that renders syncgate's counters at scrape time.
//!
//! The request path keeps its counters in plain atomics ([`crate::metrics`],
//! [`crate::backend::Backend`]); nothing here is registered with or updated through
//! `prometheus-client` on the request path. Every scrape reads every counter afresh.
//!
//! Families (one fact each, no per-key labels; see `docs/admin-api.md`):
//!
//! - `syncgate_requests_total{pool,class}`: client answers by status class
//! - `syncgate_request_duration_seconds{pool}`: histogram, request arrival → response headers
//! - `syncgate_no_ready_backend_total{pool}`: 503s answered because no backend was ready
//! - `syncgate_retries_total{pool}`: connect-failure retries on another backend
//! - `syncgate_retries_refused_total{pool}`: connect-failure retries the retry budget refused
//! - `syncgate_guard_outcomes_total{pool,outcome}`: second-opinion outcomes
//! - `syncgate_guard_memory_entries{pool,memory}`, `syncgate_guard_memory_capacity{pool,memory}`,
//!   `syncgate_guard_memory_evictions_total{pool,memory}`: the credential memories
//!   (`remembered`, `accepted`)
//! - `syncgate_guard_memory_forgotten_total{pool}`: key-set generation moves that made both
//!   memories forget
//! - `syncgate_key_collapses_total{pool}`: probes failed by keys collapsing at an unchanged
//!   generation
//! - `syncgate_pool_fail_closed{pool}`: 1 while the pool fails closed (fleet-wide key loss
//!   suspected); `syncgate_pool_fail_closed_episodes_total{pool}`: times it started
//! - `syncgate_backend_requests_total{pool,backend,class}`: forwarded requests by answer class
//! - `syncgate_backend_connect_failures_total{pool,backend}`
//! - `syncgate_backend_state{pool,backend,state}`: 1 for the current state, 0 for the others
//! - `syncgate_backend_in_flight{pool,backend}`
//! - `syncgate_probes_total{result}`: `ok` | `failed`
//! - `syncgate_ejections_total{reason}`
//! - `syncgate_config_reloads_total{result}`: `ok` | `failed`
//! - `syncgate_config_generation`
//! - `syncgate_backends{pool,source}`: backends of the running config, by source (`static` or
//!   a discover source's name)
//! - `syncgate_discovery_resolutions_total{pool,source,result}`: `ok` | `empty` | `nxdomain` |
//!   `servfail` | `timeout` | `error`
//! - `syncgate_discovery_resolve_duration_seconds`: histogram, one resolution of a source
//! - `syncgate_discovery_install_duration_seconds`: histogram, a changed address set from the
//!   answer to the swapped snapshot (diff, build, swap, probers)
//!
//! `prometheus-client` writes OpenMetrics; [`to_prometheus_text`] turns it into the classic
//! Prometheus text format (version 0.0.4) for clients that do not ask for OpenMetrics.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::backend::{Backend, State};
use crate::metrics::GuardOutcome;
use crate::snapshot::Shared;

/// Renders every syncgate metric from the shared state at scrape time.
#[derive(Debug)]
pub(super) struct Collector {
    shared: Arc<Shared>,
}

impl Collector {
    /// A collector reading `shared`.
    pub(super) fn new(shared: Arc<Shared>) -> Collector {
        Collector { shared }
    }

    /// The backends to show: the snapshot's, plus removed ones still draining whose
    /// `(pool, name)` is not taken by a configured backend (label sets must stay unique).
    fn backends(&self) -> Vec<Arc<Backend>> {
        let snapshot = self.shared.snapshot();
        let mut list: Vec<Arc<Backend>> = snapshot.backends().cloned().collect();
        let mut seen: HashSet<(Arc<str>, Arc<str>)> = list
            .iter()
            .map(|b| (b.pool.clone(), b.name.clone()))
            .collect();
        let mut removed: Vec<Arc<Backend>> = self
            .shared
            .all_backends()
            .into_iter()
            .filter(|b| b.is_removed())
            .collect();
        removed.sort_by_key(|b| b.id);
        for b in removed {
            if seen.insert((b.pool.clone(), b.name.clone())) {
                list.push(b);
            }
        }
        list
    }
}

impl Collector {
    /// The pools' fleet facts and credential memories.
    fn encode_fleets(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fleets: Vec<_> = self
            .shared
            .pool_fleets()
            .into_iter()
            .map(|(pool, fleet, memories)| (pool, fleet.view(), memories))
            .collect();
        let snapshot = self.shared.snapshot();
        // Live entries depend on the configured TTLs: only configured pools have them.
        let entries: Vec<_> = snapshot
            .pools
            .iter()
            .map(|p| (p.name.clone(), p.memory_entries()))
            .collect();
        gauges(
            e,
            "syncgate_guard_memory_entries",
            "Live entries of the guard's credential memories (remembered: confirmed guarded answers; accepted: credentials answered 2xx), by pool.",
            entries.iter().flat_map(|(pool, (remembered, accepted))| {
                [("remembered", *remembered), ("accepted", *accepted)]
                    .map(|(memory, n)| ([("pool", Esc(pool)), ("memory", Esc(memory))], n as u64))
            }),
        )?;
        gauges(
            e,
            "syncgate_guard_memory_capacity",
            "Entries the guard's credential memories can hold, by pool.",
            fleets.iter().flat_map(|(pool, _, m)| {
                [("remembered", &m.rejected), ("accepted", &m.accepted)].map(|(memory, t)| {
                    (
                        [("pool", Esc(pool)), ("memory", Esc(memory))],
                        t.capacity() as u64,
                    )
                })
            }),
        )?;
        counters(
            e,
            "syncgate_guard_memory_evictions",
            "Live entries of a credential memory overwritten to make room (since it was sized).",
            fleets.iter().flat_map(|(pool, _, m)| {
                [("remembered", &m.rejected), ("accepted", &m.accepted)].map(|(memory, t)| {
                    (
                        [("pool", Esc(pool)), ("memory", Esc(memory))],
                        t.evictions(),
                    )
                })
            }),
        )?;
        counters(
            e,
            "syncgate_guard_memory_forgotten",
            "Moves of the pool's newest key-set generation, each making both credential memories forget.",
            fleets
                .iter()
                .map(|(pool, view, _)| ([("pool", Esc(pool))], view.epoch)),
        )?;
        counters(
            e,
            "syncgate_key_collapses",
            "Probes failed because the key count collapsed at an unchanged generation.",
            fleets
                .iter()
                .map(|(pool, view, _)| ([("pool", Esc(pool))], view.collapses)),
        )?;
        gauges(
            e,
            "syncgate_pool_fail_closed",
            "1 while the pool fails closed because a fleet-wide key loss is suspected.",
            fleets.iter().map(|(pool, view, _)| {
                ([("pool", Esc(pool))], u64::from(view.fail_closed.is_some()))
            }),
        )?;
        counters(
            e,
            "syncgate_pool_fail_closed_episodes",
            "Times the pool started failing closed because a fleet-wide key loss was suspected.",
            fleets
                .iter()
                .map(|(pool, view, _)| ([("pool", Esc(pool))], view.fail_closed_episodes)),
        )
    }
}

/// A label value escaped for the text format (`\` `"` and newlines).
struct Esc<'a>(&'a str);

impl EncodeLabelValue for Esc<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes one counter family.
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
    }
    Ok(())
}

/// Writes one gauge family.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// Writes one histogram without labels, in seconds.
fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &crate::metrics::Histogram,
) -> Result<(), std::fmt::Error> {
    let unit = Unit::Seconds;
    let mut family = encoder.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    let (sum, _, cumulative) = histogram.snapshot();
    // prometheus-client wants per-bucket counts and `f64::MAX` for +Inf.
    let mut previous = 0;
    let buckets: Vec<(f64, u64)> = cumulative
        .iter()
        .map(|&(bound, total)| {
            let n = total.saturating_sub(previous);
            previous = total;
            (if bound.is_finite() { bound } else { f64::MAX }, n)
        })
        .collect();
    family.encode_histogram::<NoLabelSet>(sum, previous, &buckets, None)
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let pools = self.shared.pool_stats();
        let backends = self.backends();

        // Per pool.
        counters(
            e,
            "syncgate_requests",
            "Client requests answered, by pool and status class.",
            pools.iter().flat_map(|(pool, stats)| {
                // Every client gets an HTTP answer: the pool has no `error` class.
                stats
                    .answers
                    .snapshot()
                    .into_iter()
                    .filter(|(class, _)| *class != "error")
                    .map(|(class, n)| ([("pool", Esc(pool)), ("class", Esc(class))], n))
            }),
        )?;
        {
            let unit = Unit::Seconds;
            let mut family = e.encode_descriptor(
                "syncgate_request_duration",
                "Time from a client request's arrival to its response headers (upstream latency included), by pool.",
                Some(&unit),
                MetricType::Histogram,
            )?;
            for (pool, stats) in &pools {
                let (sum, _, cumulative) = stats.latency.snapshot();
                // prometheus-client wants per-bucket counts and `f64::MAX` for +Inf.
                let mut previous = 0;
                let buckets: Vec<(f64, u64)> = cumulative
                    .iter()
                    .map(|&(bound, total)| {
                        let n = total.saturating_sub(previous);
                        previous = total;
                        (if bound.is_finite() { bound } else { f64::MAX }, n)
                    })
                    .collect();
                // The +Inf bucket is the count, so count and buckets always agree.
                let labels = [("pool", Esc(pool))];
                family
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, previous, &buckets, None)?;
            }
        }
        counters(
            e,
            "syncgate_no_ready_backend",
            "Requests answered 503 because no backend of the pool was ready.",
            pools.iter().map(|(pool, stats)| {
                (
                    [("pool", Esc(pool))],
                    stats.no_ready.load(Ordering::Relaxed),
                )
            }),
        )?;
        counters(
            e,
            "syncgate_retries",
            "Requests retried on another backend after a connect failure.",
            pools.iter().map(|(pool, stats)| {
                ([("pool", Esc(pool))], stats.retries.load(Ordering::Relaxed))
            }),
        )?;
        counters(
            e,
            "syncgate_retries_refused",
            "Connect-failure retries refused by the retry budget (the client got 502).",
            pools.iter().map(|(pool, stats)| {
                (
                    [("pool", Esc(pool))],
                    stats.retries_refused.load(Ordering::Relaxed),
                )
            }),
        )?;
        counters(
            e,
            "syncgate_guard_outcomes",
            "Second opinions on guarded answers (401/403), by pool and outcome.",
            pools.iter().flat_map(|(pool, stats)| {
                GuardOutcome::ALL
                    .iter()
                    .zip(&stats.guard_outcomes)
                    .map(move |(outcome, n)| {
                        (
                            [("pool", Esc(pool)), ("outcome", Esc(outcome.as_str()))],
                            n.load(Ordering::Relaxed),
                        )
                    })
            }),
        )?;

        self.encode_fleets(e)?;

        // Per backend.
        counters(
            e,
            "syncgate_backend_requests",
            "Requests forwarded to a backend, by answer status class (error: no answer).",
            backends.iter().flat_map(|b| {
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
        )?;
        counters(
            e,
            "syncgate_backend_connect_failures",
            "Connections to a backend that failed (refused, reset before sending, timeout).",
            backends.iter().map(|b| {
                (
                    [("pool", Esc(&b.pool)), ("backend", Esc(&b.name))],
                    b.connect_failures.load(Ordering::Relaxed),
                )
            }),
        )?;
        gauges(
            e,
            "syncgate_backend_state",
            "Backend lifecycle state: 1 for the current state, 0 for the others.",
            backends.iter().flat_map(|b| {
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
        )?;
        gauges(
            e,
            "syncgate_backend_in_flight",
            "Requests forwarded to a backend and not finished yet.",
            backends.iter().map(|b| {
                (
                    [("pool", Esc(&b.pool)), ("backend", Esc(&b.name))],
                    b.in_flight(),
                )
            }),
        )?;

        // Process-wide.
        let m = &self.shared.metrics;
        counters(
            e,
            "syncgate_probes",
            "Readiness probes, by result.",
            [
                ([("result", Esc("ok"))], m.probes_ok.load(Ordering::Relaxed)),
                (
                    [("result", Esc("failed"))],
                    m.probes_failed.load(Ordering::Relaxed),
                ),
            ],
        )?;
        counters(
            e,
            "syncgate_ejections",
            "Backends taken out of rotation, by reason.",
            m.ejections()
                .into_iter()
                .map(|(reason, n)| ([("reason", Esc(reason))], n)),
        )?;
        counters(
            e,
            "syncgate_config_reloads",
            "Config reloads, by result (failed: the running config stayed).",
            [
                (
                    [("result", Esc("ok"))],
                    m.reloads_ok.load(Ordering::Relaxed),
                ),
                (
                    [("result", Esc("failed"))],
                    m.reloads_failed.load(Ordering::Relaxed),
                ),
            ],
        )?;
        {
            let mut family = e.encode_descriptor(
                "syncgate_config_generation",
                "Generation of the running config (1 at start, +1 per applied reload).",
                None,
                MetricType::Gauge,
            )?;
            family.encode_gauge(&self.shared.snapshot().generation)?;
        }

        // Discovery.
        histogram(
            e,
            "syncgate_discovery_resolve_duration",
            "Time one resolution of a discover source took.",
            &m.discovery_resolve,
        )?;
        histogram(
            e,
            "syncgate_discovery_install_duration",
            "Time from a discover source's changed answer to its snapshot swapped (diff, build, swap, probers).",
            &m.discovery_install,
        )?;
        let mut by_source: std::collections::BTreeMap<(Arc<str>, String), u64> =
            std::collections::BTreeMap::new();
        for b in self.shared.snapshot().backends() {
            *by_source
                .entry((b.pool.clone(), b.source_name().to_owned()))
                .or_default() += 1;
        }
        gauges(
            e,
            "syncgate_backends",
            "Backends of the running config, by pool and source (static, or a discover source).",
            by_source
                .iter()
                .map(|((pool, source), n)| ([("pool", Esc(pool)), ("source", Esc(source))], *n)),
        )?;
        let resolutions = m.resolutions();
        counters(
            e,
            "syncgate_discovery_resolutions",
            "DNS resolutions of discover sources, by pool, source and result.",
            resolutions.iter().map(|((pool, source, result), n)| {
                (
                    [
                        ("pool", Esc(pool)),
                        ("source", Esc(source)),
                        ("result", Esc(result)),
                    ],
                    *n,
                )
            }),
        )?;
        Ok(())
    }
}

/// OpenMetrics text as the classic Prometheus text format: counter families are named with
/// their `_total` suffix in `# HELP`/`# TYPE`, `unknown` is `untyped`, and `# UNIT` and
/// `# EOF` lines go. Samples are the same in both formats.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                let _ = writeln!(out, "{prefix}{name}{suffix} {tail}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_to_prometheus_text() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                  a_requests_total{pool=\"p\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\n\
                  # UNIT a_up seconds\na_up 1\n# TYPE a_x unknown\na_x 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total{pool=\"p\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n\
             # TYPE a_x untyped\na_x 2\n"
        );
    }
}
