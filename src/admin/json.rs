//! The admin API's JSON: `GET /api/backends` written backend by backend, and the pieces the
//! other answers share (a backend, a pool's counters and fleet view, config errors).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use crate::backend::{Backend, BackendInfo, State};
use crate::clock::rfc3339;
use crate::config::ConfigError;
use crate::metrics::{GuardOutcome, PoolStats};
use crate::snapshot::Pool;

/// The answer of `GET /api/backends`, serialized as it is written: each backend's JSON is made
/// just before it is written and dropped just after, so a pool of thousands of backends never
/// has all their `Value` trees alive at once (with 3,000 backends those took 27 MB, which the
/// allocator then kept). The bytes are those of the `Value` it replaces: the same keys, sorted.
pub(super) struct BackendsBody {
    pub(super) generation: u64,
    pub(super) pools: BTreeMap<String, PoolBody>,
}

/// One pool of [`BackendsBody`]: its fields, `backends` a placeholder that keeps its place in
/// the key order, and the backends that go there (each with its pool's slow start).
pub(super) struct PoolBody {
    pub(super) fields: Map<String, Value>,
    pub(super) backends: Vec<(Arc<Backend>, Duration)>,
}

/// The fields of a JSON object (none for anything else).
pub(super) fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A pool's backends, each made into JSON only when it is written.
pub(super) struct LazyBackends<'a>(&'a [(Arc<Backend>, Duration)]);

impl Serialize for BackendsBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("generation", &self.generation)?;
        map.serialize_entry("pools", &self.pools)?;
        map.end()
    }
}

impl Serialize for PoolBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len()))?;
        for (key, value) in &self.fields {
            if key == "backends" {
                map.serialize_entry(key, &LazyBackends(&self.backends))?;
            } else {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

impl Serialize for LazyBackends<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.0
                .iter()
                .map(|(b, slow_start)| backend_json(b, *slow_start)),
        )
    }
}

/// One backend as the admin API shows it; `slow_start` is its pool's (for the effective
/// weight).
pub(super) fn backend_json(b: &Backend, slow_start: Duration) -> Value {
    // State read under the info lock, which every transition holds: state and reason agree.
    let (state, info) = {
        let info = b.info();
        (b.state(), info.clone())
    };
    let answers = b.answers.snapshot();
    let requests: u64 = answers.iter().map(|(_, n)| n).sum();
    let errors = answers
        .iter()
        .find(|(class, _)| *class == "error")
        .map_or(0, |(_, n)| *n);
    let by_class: Map<String, Value> = answers
        .iter()
        .map(|(class, n)| (class.to_string(), Value::from(*n)))
        .collect();
    json!({
        "name": &*b.name,
        "addr": b.addr.to_string(),
        "source": b.source_name(),
        "state": state.as_str(),
        "weight": b.weight(),
        "in_flight": b.in_flight(),
        "reason": info.reason,
        "since": rfc3339(info.since),
        "key_sync": info.key_sync,
        "last_probe_latency_ms": info.last_probe_latency.map(|d| {
            (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
        }),
        "last_probe_ok": info.last_probe_ok,
        "last_probe_at": info.last_probe_at.map(rfc3339),
        "key_sync_at": info.key_sync_at.map(rfc3339),
        "key_sync_stale": key_sync_stale(&info),
        "effective_weight": effective_weight(b, state, slow_start),
        "contradicted": b.outlier.contradicted(),
        "requests": requests,
        "errors": errors,
        "answers": by_class,
        "connect_failures": b.connect_failures.load(Ordering::Relaxed),
        "removed": b.is_removed(),
    })
}

/// Whether a backend's key-sync report is older than its last probe: that probe brought no
/// report (connect refused, timeout, a body that is no report), so the report shown describes
/// the worker as it was, not as it is. Pure.
pub(super) fn key_sync_stale(info: &BackendInfo) -> bool {
    match (info.key_sync, info.key_sync_at, info.last_probe_at) {
        (Some(_), Some(reported), Some(probed)) => reported < probed,
        _ => false,
    }
}

/// The weight the balancer gives the backend now: its configured weight scaled by the
/// slow-start ramp, 0 when it gets no traffic. Thousandths, as the balancer counts.
pub(super) fn effective_weight(b: &Backend, state: State, slow_start: Duration) -> f64 {
    if state != State::Ready {
        return 0.0;
    }
    b.effective_weight(slow_start, crate::clock::now_millis()) as f64 / 1000.0
}

/// Whole milliseconds of `d`, saturating.
pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A pool's counters since start, for the status page to turn into rates (differences
/// between two reads): answers by class, the latency histogram, 503s for want of a ready
/// backend, retries and the guard's outcomes.
pub(super) fn pool_stats_json(stats: &PoolStats) -> Value {
    let answers: Map<String, Value> = stats
        .answers
        .snapshot()
        .iter()
        .map(|(class, n)| (class.to_string(), Value::from(*n)))
        .collect();
    let (sum, count, buckets) = stats.latency.snapshot();
    let bounds: Vec<f64> = buckets
        .iter()
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
        .collect();
    let counts: Vec<u64> = buckets.iter().map(|(_, n)| *n).collect();
    let guard: Map<String, Value> = GuardOutcome::ALL
        .iter()
        .zip(&stats.guard_outcomes)
        .map(|(o, n)| {
            (
                o.as_str().to_string(),
                Value::from(n.load(Ordering::Relaxed)),
            )
        })
        .collect();
    json!({
        "answers": answers,
        "latency": {
            "count": count,
            "sum_seconds": sum,
            "bounds": bounds,
            "counts": counts,
        },
        "no_ready_backend": stats.no_ready.load(Ordering::Relaxed),
        "retries": stats.retries.load(Ordering::Relaxed),
        "retries_refused": stats.retries_refused.load(Ordering::Relaxed),
        "guard": guard,
    })
}

/// A pool's fleet facts as the admin API shows them: the key count at the newest generation,
/// whether the pool fails closed (and why), and the guard's credential memories (sizes and
/// counts only, never a fingerprint).
pub(super) fn fleet_json(pool: &Pool) -> Value {
    let view = pool.fleet.view();
    let (remembered, accepted) = pool.memory_entries();
    let memory = |entries: usize, table: &crate::memory::Table| {
        json!({
            "entries": entries,
            "capacity": table.capacity(),
            "evictions": table.evictions(),
        })
    };
    json!({
        "key_sync": view.mark,
        "fail_closed": view.fail_closed.map(|f| json!({
            "reason": f.reason,
            "since": rfc3339(f.since),
        })),
        "guard_memory": {
            "remembered": memory(remembered, &pool.memories.rejected),
            "accepted": memory(accepted, &pool.memories.accepted),
            "forgotten": view.epoch,
        },
    })
}

/// Config errors as JSON (structured fields plus the `file:line:col: message` text): the first
/// [`crate::config::limits::MAX_ERRORS_SHOWN`], and how many more there are.
pub(super) fn errors_json(errors: &[ConfigError]) -> (Vec<Value>, usize) {
    let (shown, omitted) = crate::config::shown_errors(errors);
    let shown = shown
        .iter()
        .map(|e| {
            json!({
                "file": e.file,
                "line": e.line,
                "col": e.col,
                "message": e.message,
                "text": e.to_string(),
            })
        })
        .collect();
    (shown, omitted)
}
