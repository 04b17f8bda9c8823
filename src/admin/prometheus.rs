//! `GET /metrics`: syncgate's counters rendered through `prometheus-client` at scrape time,
//! written while they are sent ([`Scrape`]: a piece at a time, each per-backend family
//! ([`backends`]) a slice of backends at a time).
//!
//! The request path keeps its counters in plain atomics ([`crate::metrics`],
//! [`crate::backend::Backend`]); nothing here is registered with or updated through
//! `prometheus-client` on the request path. Every scrape reads every counter afresh.
//!
//! Families (one fact each, no per-key labels; every one is described in
//! `docs/admin-api.md`). Label values come from the config and from discovery (pool, backend,
//! discover source names) or are fixed words, never from requests, so the label sets stay
//! bounded; a backend's series leave when it is forgotten (removed and drained, or vanished
//! from DNS and drained).
//!
//! - Per pool: `syncgate_requests_total{pool,class}` (every answer, syncgate's own included;
//!   `pool=""` for requests no route matched), `syncgate_request_duration_seconds{pool}`,
//!   `syncgate_no_ready_backend_total`, `syncgate_timeouts_total`,
//!   `syncgate_client_aborts_total`, `syncgate_retries_total`, `syncgate_retries_refused_total`,
//!   `syncgate_retry_budget_remaining`, `syncgate_guard_outcomes_total{pool,outcome}`, the
//!   credential memories (`syncgate_guard_memory_*`), `syncgate_key_collapses_total`,
//!   `syncgate_pool_fail_closed`, `syncgate_pool_fail_closed_episodes_total`,
//!   `syncgate_pool_ready_backends`, `syncgate_pool_ready_generation`
//! - Per backend (`{pool,backend}`): `syncgate_backend_requests_total{…,class}`,
//!   `syncgate_backend_connect_failures_total`, `syncgate_backend_state{…,state}`,
//!   `syncgate_backend_in_flight`, `syncgate_backend_latency_seconds`,
//!   `syncgate_backend_sent_bytes_total`, `syncgate_backend_received_bytes_total`,
//!   `syncgate_backend_keys`, `syncgate_backend_key_generation`,
//!   `syncgate_backend_sync_complete`, `syncgate_probes_total{…,result}`,
//!   `syncgate_probe_duration_seconds`, `syncgate_ejections_total{…,cause}`
//! - Process: `syncgate_client_connections`, `syncgate_client_connections_parked`,
//!   `syncgate_client_connections_max`,
//!   `syncgate_client_connections_opened_total`, `syncgate_config_reloads_total{result}`,
//!   `syncgate_config_generation`, `syncgate_config_last_reload_success_timestamp_seconds`,
//!   `syncgate_config_last_reload_successful`, `syncgate_access_log_dropped_total`,
//!   `syncgate_build_info{version,commit}`, and the
//!   standard `process_*` families (CPU, memory, file descriptors, start time)
//! - Discovery: `syncgate_backends{pool,source}`,
//!   `syncgate_discovery_resolutions_total{pool,source,result}`,
//!   `syncgate_discovery_resolve_duration_seconds`, `syncgate_discovery_install_duration_seconds`
//!
//! `prometheus-client` writes OpenMetrics; [`to_prometheus_text`] turns it into the classic
//! Prometheus text format (version 0.0.4) for clients that do not ask for OpenMetrics.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::backend::Backend;
use crate::metrics::{process, GuardOutcome, PoolStats};
use crate::reload::Control;
use crate::snapshot::Shared;
use families::{counters, gauge, gauges, histogram, histograms, unix_seconds, Esc};

mod backends;
mod families;
mod scrape;

pub(super) use scrape::Scrape;

/// Renders every syncgate metric from the shared state and the control plane at scrape time.
#[derive(Debug)]
pub(super) struct Collector {
    control: Arc<Control>,
    shared: Arc<Shared>,
}

impl Collector {
    /// A collector reading `control` and its shared state.
    pub(super) fn new(control: Arc<Control>) -> Collector {
        let shared = control.shared.clone();
        Collector { control, shared }
    }

    /// The backends to show: the snapshot's, plus removed ones still draining whose
    /// `(pool, name)` is not taken by a configured backend (label sets must stay unique).
    pub(super) fn backends(&self) -> Vec<Arc<Backend>> {
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

impl Collector {
    /// Per pool: timeouts, client aborts, the retry budget, ready backends and the newest
    /// generation among them.
    fn encode_pool_health(
        &self,
        e: &mut DescriptorEncoder,
        pools: &[(String, Arc<PoolStats>)],
    ) -> Result<(), std::fmt::Error> {
        counters(
            e,
            "syncgate_timeouts",
            "Requests answered 504 because request_timeout passed before the backend answered.",
            pools.iter().map(|(pool, stats)| {
                (
                    [("pool", Esc(pool))],
                    stats.timeouts.load(Ordering::Relaxed),
                )
            }),
        )?;
        counters(
            e,
            "syncgate_client_aborts",
            "Requests whose client went away before their answer was ready.",
            pools.iter().map(|(pool, stats)| {
                (
                    [("pool", Esc(pool))],
                    stats.client_aborts.load(Ordering::Relaxed),
                )
            }),
        )?;
        // Budgets and backends exist for configured pools only.
        let snapshot = self.shared.snapshot();
        gauges(
            e,
            "syncgate_retry_budget_remaining",
            "Retries and second opinions the pool's retry budget allows now.",
            snapshot
                .pools
                .iter()
                .map(|p| ([("pool", Esc(&p.name))], p.budget.remaining())),
        )?;
        gauges(
            e,
            "syncgate_pool_ready_backends",
            "Backends of the pool that are ready (0: clients get 503).",
            snapshot.pools.iter().map(|p| {
                let ready = p.backends.iter().filter(|b| b.is_routable()).count();
                ([("pool", Esc(&p.name))], ready as u64)
            }),
        )?;
        gauges(
            e,
            "syncgate_pool_ready_generation",
            "The newest key-set generation among the pool's ready backends (no series while none reported one).",
            snapshot.pools.iter().filter_map(|p| {
                let newest = p
                    .backends
                    .iter()
                    .filter(|b| b.is_routable())
                    .filter_map(|b| b.key_sync())
                    .map(|k| k.generation)
                    .max()?;
                Some(([("pool", Esc(&p.name))], newest))
            }),
        )
    }

    /// Client connections, build information, and the process's own figures.
    fn encode_process(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (open, opened) = self.shared.metrics.connections.counts();
        gauge(
            e,
            "syncgate_client_connections",
            "Client connections open now.",
            open,
        )?;
        gauge(
            e,
            "syncgate_client_connections_parked",
            "Idle HTTP/1.1 keep-alive client connections parked now: hyper's buffers released until the client sends again.",
            self.shared.metrics.connections.parked_now(),
        )?;
        gauge(
            e,
            "syncgate_client_connections_max",
            "max_connections: at this many open client connections the idlest is closed to admit a new one.",
            self.shared.snapshot().config.server.max_connections as u64,
        )?;
        {
            let mut family = e.encode_descriptor(
                "syncgate_client_connections_opened",
                "Client connections accepted since start.",
                None,
                MetricType::Counter,
            )?;
            family.encode_counter::<NoLabelSet, u64, u64>(&opened, None)?;
        }
        gauges(
            e,
            "syncgate_build_info",
            "Always 1; the labels name the version and the commit syncgate was built from.",
            [(
                [
                    ("version", Esc(env!("CARGO_PKG_VERSION"))),
                    ("commit", Esc(env!("SYNCGATE_COMMIT"))),
                ],
                1u64,
            )],
        )?;
        let Some(p) = process::read() else {
            return Ok(());
        };
        {
            let mut family = e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, seconds.",
                None,
                MetricType::Counter,
            )?;
            family.encode_counter::<NoLabelSet, f64, u64>(&p.cpu_seconds, None)?;
        }
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size, bytes.",
            p.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size, bytes.",
            p.virtual_bytes,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Open file descriptors (client and backend connections included).",
            p.open_fds,
        )?;
        if let Some(max) = p.max_fds {
            gauge(
                e,
                "process_max_fds",
                "The limit on open file descriptors.",
                max,
            )?;
        }
        gauge(
            e,
            "process_start_time_seconds",
            "When the process started, seconds since the Unix epoch.",
            p.start_time_seconds,
        )
    }
}

impl Collector {
    /// Per pool: answers, latency, retries, the guard, pool health and fleet facts.
    pub(super) fn encode_pools(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let pools = self.shared.pool_stats();

        // Per pool. Requests no route matched are the `pool=""` series of the request
        // families (no pool is named "": validation requires a name).
        let answered: Vec<(&str, &PoolStats)> =
            std::iter::once(("", &self.shared.metrics.unrouted))
                .chain(pools.iter().map(|(pool, stats)| (pool.as_str(), &**stats)))
                .collect();
        counters(
            e,
            "syncgate_requests",
            "Client requests answered (syncgate's own answers included), by pool and status class.",
            answered.iter().flat_map(|(pool, stats)| {
                // Every client gets an HTTP answer: the pool has no `error` class.
                stats
                    .answers
                    .snapshot()
                    .into_iter()
                    .filter(|(class, _)| *class != "error")
                    .map(|(class, n)| ([("pool", Esc(pool)), ("class", Esc(class))], n))
            }),
        )?;
        histograms(
            e,
            "syncgate_request_duration",
            "Time from a client request's arrival to its response headers (upstream latency included), by pool.",
            answered
                .iter()
                .map(|(pool, stats)| ([("pool", Esc(pool))], &stats.latency)),
        )?;
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

        self.encode_pool_health(e, &pools)?;
        self.encode_fleets(e)?;
        Ok(())
    }

    /// Process-wide: connections, the process, config reloads, discovery.
    pub(super) fn encode_process_wide(
        &self,
        e: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let m = &self.shared.metrics;
        self.encode_process(e)?;
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
                "syncgate_access_log_dropped",
                "Access log lines dropped: the writer fell behind (its queue was full), a write failed, or no file was open.",
                None,
                MetricType::Counter,
            )?;
            family
                .encode_counter::<NoLabelSet, u64, u64>(&self.shared.access_log.dropped(), None)?;
        }
        {
            let mut family = e.encode_descriptor(
                "syncgate_config_generation",
                "Generation of the running config (1 at start, +1 per applied reload).",
                None,
                MetricType::Gauge,
            )?;
            family.encode_gauge(&self.shared.snapshot().generation)?;
        }
        let status = self.control.status();
        gauge(
            e,
            "syncgate_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (at start, or by the last reload that applied), seconds since the Unix epoch.",
            unix_seconds(status.loaded_at),
        )?;
        gauge(
            e,
            "syncgate_config_last_reload_successful",
            "0 while the config file on disk does not load (the last reload failed and the running config stayed), else 1.",
            u64::from(status.last_error.is_none()),
        )?;

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
