//! The readiness gate: the key-sync contract, fleet consistency checks, the rise/fall state
//! machine, and the prober task that drives them for one backend.
//!
//! The pure parts ([`Gate`], [`judge`], [`check_fleet`], [`collapse`], [`next_probe_at`]) do
//! no I/O and are unit-tested on their own; [`run_prober`] is the only place that talks to the
//! network. The reference values of the fleet checks come from the pool's
//! [`Fleet`](crate::fleet::Fleet) aggregates, which the probes feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, KeySync, State};
use crate::body::ReqBody;
use crate::config::{Contract, ProbeConfig};
use crate::fleet::{Mark, Probed, Reference};
use crate::metrics::EjectionCause;
use crate::snapshot::Shared;
use crate::upstream::{self, HeadWriter, Outgoing, UpstreamTls};

/// Probe answers larger than this are a failure (a readiness report is a few hundred bytes).
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Why a probe failed, and whether that ejects a ready backend at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// As DESIGN.md words reasons: `connect refused`, `stale generation 40 < 52 - 10`.
    pub reason: String,
    /// What kind of failure it is.
    pub kind: FailureKind,
}

/// Kinds of probe failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A failure to ride out over `fall` probes (timeouts, refused connections, fleet checks).
    Transient,
    /// The report keeps the pool's generation but lost its keys: ejects at once, like a
    /// worker saying its sync is incomplete.
    Collapse,
}

impl Failure {
    fn collapse(reason: String) -> Failure {
        Failure {
            reason,
            kind: FailureKind::Collapse,
        }
    }
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure {
            reason,
            kind: FailureKind::Transient,
        }
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Failure {
        Failure::from(reason.to_owned())
    }
}

/// The rise/fall counter of one backend. Pure: fed probe results and the backend's current
/// state, it says which transition (if any) the result calls for.
#[derive(Debug, Default, Clone)]
pub struct Gate {
    passes: u32,
    failures: u32,
    /// The state seen at the previous record. When the state changed in between (the guard
    /// ejected the backend, an operator enabled it), the counters restart: passes collected
    /// while ready must not re-admit a backend the guard just ejected.
    last_state: Option<State>,
}

/// A state change asked for by the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state the backend must be in for the change to apply.
    pub from: State,
    /// The new state.
    pub to: State,
}

impl Gate {
    /// Records one probe result for a backend currently in `state`.
    pub fn record(&mut self, ok: bool, state: State, rise: u32, fall: u32) -> Option<Transition> {
        if self.last_state != Some(state) {
            self.passes = 0;
            self.failures = 0;
            self.last_state = Some(state);
        }
        if ok {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
        }
        match state {
            State::Pending | State::Ejected if self.passes >= rise => Some(Transition {
                from: state,
                to: State::Ready,
            }),
            State::Ready if self.failures >= fall => Some(Transition {
                from: state,
                to: State::Ejected,
            }),
            _ => None,
        }
    }

    /// Consecutive passes so far in the current state.
    pub fn passes(&self) -> u32 {
        self.passes
    }
}

#[derive(Debug, Deserialize)]
struct ProbeBody {
    key_sync: RawKeySync,
}

/// The report as sent: a worker still syncing may leave out what it does not know yet.
#[derive(Debug, Deserialize)]
struct RawKeySync {
    complete: bool,
    generation: Option<u64>,
    keys: Option<u64>,
}

impl RawKeySync {
    /// The report, or what a complete one lacks (it must say which keys it holds).
    fn validate(self) -> Result<KeySync, String> {
        match (self.complete, self.generation, self.keys) {
            (true, None, _) => Err("invalid key_sync report: missing field `generation`".into()),
            (true, _, None) => Err("invalid key_sync report: missing field `keys`".into()),
            (complete, generation, keys) => Ok(KeySync {
                complete,
                generation: generation.unwrap_or(0),
                keys: keys.unwrap_or(0),
            }),
        }
    }
}

/// Judges one probe answer (status and body) against the contract and the fleet's reference
/// values. Returns the parsed report (if any) and the failure (if the probe failed).
pub fn judge(
    cfg: &ProbeConfig,
    status: u16,
    body: &[u8],
    reference: &Reference,
) -> (Option<KeySync>, Result<(), Failure>) {
    let is_2xx = (200..300).contains(&status);
    if cfg.contract == Contract::Status {
        return (
            None,
            if is_2xx {
                Ok(())
            } else {
                Err(format!("status {status}").into())
            },
        );
    }
    // Parse even non-2xx answers: a 503 "still syncing" report is worth showing an operator.
    let parsed = serde_json::from_slice::<ProbeBody>(body);
    let keys_reported = parsed.as_ref().is_ok_and(|b| b.key_sync.keys.is_some());
    let parsed = parsed.map(|b| b.key_sync.validate());
    if !is_2xx {
        let report = parsed.ok().and_then(Result::ok);
        return (report, Err(format!("status {status}").into()));
    }
    let report = match parsed {
        Ok(Ok(report)) => report,
        Ok(Err(reason)) => return (None, Err(reason.into())),
        Err(e) if e.is_data() => {
            return (None, Err(format!("invalid key_sync report: {e}").into()))
        }
        Err(e) => {
            return (
                None,
                Err(format!("invalid json at line {} column {}", e.line(), e.column()).into()),
            )
        }
    };
    if !report.complete {
        // A worker that did not say how many keys it holds is not quoted as holding 0.
        let reason = match keys_reported {
            true => format!("sync incomplete ({} keys)", report.keys),
            false => "sync incomplete".to_string(),
        };
        return (Some(report), Err(reason.into()));
    }
    (
        Some(report),
        check_fleet(
            &report,
            reference,
            cfg.max_generation_lag,
            cfg.min_key_ratio,
        ),
    )
}

/// The fleet consistency checks: a complete report must not have collapsed, and must agree
/// with the reference peers. With no reference the checks pass (the first worker of a pool
/// has nobody to agree with).
pub fn check_fleet(
    report: &KeySync,
    reference: &Reference,
    lag: u64,
    ratio: f64,
) -> Result<(), Failure> {
    if let Some(reason) = reference.mark.and_then(|m| collapse(report, m, lag, ratio)) {
        return Err(Failure::collapse(reason));
    }
    if let Some(newest) = reference.newest {
        if report.generation < newest.saturating_sub(lag) {
            return Err(format!(
                "stale generation {} < {} - {}",
                report.generation, newest, lag
            )
            .into());
        }
    }
    if let Some(median) = reference.median {
        if (report.keys as f64) < ratio * median as f64 {
            return Err(format!("too few keys {} < {} × {}", report.keys, ratio, median).into());
        }
    }
    Ok(())
}

/// The collapse rule: a key count does not fall by a large share while the key set keeps its
/// generation. A report at the mark's generation (or one within `lag` before it) with fewer
/// keys than `ratio` of the mark has lost keys, not accounts; one with a newer generation may
/// (accounts purged). Returns the reason when it collapsed. Pure.
pub fn collapse(report: &KeySync, mark: Mark, lag: u64, ratio: f64) -> Option<String> {
    let within = report.generation <= mark.generation
        && report.generation >= mark.generation.saturating_sub(lag);
    if !within || report.keys as f64 >= ratio * mark.keys as f64 {
        return None;
    }
    let newest = if report.generation == mark.generation {
        String::new()
    } else {
        format!(" (newest {})", mark.generation)
    };
    Some(format!(
        "keys fell {} → {} at generation {}{newest}",
        mark.keys, report.keys, report.generation
    ))
}

/// The `cause` of an ejection the probes decided.
fn ejection_cause(unsynced: bool, collapsed: bool) -> EjectionCause {
    match (unsynced, collapsed) {
        (true, _) => EjectionCause::SyncIncomplete,
        (false, true) => EjectionCause::KeyCollapse,
        (false, false) => EjectionCause::ProbeFailed,
    }
}

/// When the next probe of a backend starts: `interval` after the previous one started, or when
/// it finished if it took longer (a timeout may exceed the interval), so probes of one backend
/// never overlap. Pure.
pub fn next_probe_at(started: Instant, finished: Instant, interval: Duration) -> Instant {
    (started + interval).max(finished)
}

/// How long a refused guarded answer keeps its pool failing closed: five probe intervals,
/// within 1 s to 30 s.
fn refusal_hold(interval: Duration) -> Duration {
    interval
        .saturating_mul(5)
        .clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Sends one probe over a fresh connection (a dead worker must show up as `connect refused`,
/// not hide behind a pooled connection) and returns the status and body.
async fn fetch(
    backend: &Backend,
    cfg: &ProbeConfig,
    tls: Option<&UpstreamTls>,
) -> Result<(u16, Bytes), String> {
    let mut head = HeadWriter::new(&http::Method::GET, &cfg.path);
    head.header(b"host", backend.authority.as_str().as_bytes());
    head.header(b"accept", b"application/json");
    head.header(b"user-agent", b"syncgate-probe");
    let req = Outgoing::new(head, false, false, ReqBody::empty());
    let (status, body) = upstream::fetch(backend, tls, req, MAX_PROBE_BODY).await?;
    Ok((status.as_u16(), body))
}

/// Probes `backend` every `interval` until `token` is cancelled or the backend leaves the
/// config, moving it between `pending`, `ready` and `ejected` as its reports dictate.
pub async fn run_prober(backend: Arc<Backend>, shared: Arc<Shared>, token: CancellationToken) {
    let mut gate = Gate::default();
    loop {
        if backend.is_removed() {
            return;
        }
        // The pool's probe settings are read afresh each round so that a reload applies at
        // once without restarting the prober (and its rise/fall history).
        let snapshot = shared.snapshot();
        let Some(pool) = snapshot.pool(&backend.pool) else {
            return;
        };
        let cfg = pool.probe.clone();
        let fleet = pool.fleet.clone();
        let tls = pool.tls.clone();
        drop(snapshot);

        let started = Instant::now();
        let fetched = tokio::select! {
            _ = token.cancelled() => return,
            r = tokio::time::timeout(cfg.timeout, fetch(&backend, &cfg, tls.as_ref())) => r,
        };
        let latency = started.elapsed();
        let (report, verdict) = match fetched {
            Err(_) => (None, Err(Failure::from("timeout"))),
            Ok(Err(reason)) => (None, Err(Failure::from(reason))),
            Ok(Ok((status, body))) => judge(&cfg, status, &body, &fleet.reference(backend.id)),
        };
        let ok = verdict.is_ok();
        backend.metrics.probed(ok, latency);
        let probed = match &verdict {
            Ok(()) => Probed::Passed,
            Err(f) if f.kind == FailureKind::Collapse => Probed::Collapsed(f.reason.clone()),
            Err(_) => Probed::Failed,
        };
        fleet.record(&backend, report, probed, cfg.max_generation_lag);
        // A worker that says itself its sync is incomplete is out at once: that is no
        // transient failure to ride out over `fall` probes, and every valid key it no longer
        // holds would be a 401 for the guard to catch. So is one whose keys collapsed.
        let unsynced = report.is_some_and(|r| !r.complete);
        let collapsed = verdict
            .as_ref()
            .is_err_and(|f| f.kind == FailureKind::Collapse);
        let fall = if unsynced || collapsed { 1 } else { cfg.fall };
        let state = backend.state();
        let transition = gate.record(ok, state, cfg.rise, fall);
        {
            let mut info = backend.info();
            // Read again under the info lock, which every transition holds: the reason written
            // below matches the state it describes even if the guard or an operator moved the
            // backend while the probe was in flight.
            let state = backend.state();
            let now = std::time::SystemTime::now();
            info.last_probe_latency = Some(latency);
            info.last_probe_ok = Some(ok);
            info.last_probe_at = Some(now);
            if report.is_some() {
                info.key_sync = report;
                info.key_sync_at = Some(now);
            }
            match (&verdict, transition) {
                // A failure reason is shown while the backend is out, or when it is about to be
                // taken out; the transition below overwrites it with the same text.
                // Draining and disabled backends keep the operator's or the reload's reason.
                _ if matches!(state, State::Draining | State::Disabled) => {}
                (Err(failure), _) if state != State::Ready || transition.is_some() => {
                    info.reason = failure.reason.clone();
                }
                (Ok(()), None) if state != State::Ready => {
                    info.reason = format!("probe passed ({}/{})", gate.passes(), cfg.rise);
                }
                _ => {}
            }
        }
        if let Err(failure) = &verdict {
            tracing::debug!(pool = %backend.pool, backend = %backend.name, reason = %failure.reason, "probe failed");
        }
        if let Some(t) = transition {
            let reason = match &verdict {
                Ok(()) => format!("{} probes passed", cfg.rise),
                // The bare failure, as DESIGN.md words reasons (`connect refused`,
                // `sync incomplete (1200 keys)`); the event says it was an ejection.
                Err(f) => f.reason.clone(),
            };
            if backend.transition(&[t.from], t.to, &reason, &shared.events)
                && t.to == State::Ejected
            {
                backend.metrics.ejected(ejection_cause(unsynced, collapsed));
            }
        }
        fleet.review(&backend.pool, &shared.events, refusal_hold(cfg.interval));

        let next = next_probe_at(started, Instant::now(), cfg.interval);
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(contract: Contract) -> ProbeConfig {
        ProbeConfig {
            path: "/ready".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 2,
            contract,
            max_generation_lag: 10,
            min_key_ratio: 0.98,
        }
    }

    const NONE: Reference = Reference {
        newest: None,
        median: None,
        mark: None,
    };

    fn ks(generation: u64, keys: u64) -> KeySync {
        KeySync {
            complete: true,
            generation,
            keys,
        }
    }

    #[test]
    fn gate_admits_after_rise_and_ejects_after_fall() {
        let mut g = Gate::default();
        assert_eq!(g.record(true, State::Pending, 2, 2), None);
        let t = g.record(true, State::Pending, 2, 2).unwrap();
        assert_eq!((t.from, t.to), (State::Pending, State::Ready));
        assert_eq!(g.record(false, State::Ready, 2, 2), None);
        assert_eq!(g.record(true, State::Ready, 2, 2), None);
        assert_eq!(g.record(false, State::Ready, 2, 2), None);
        let t = g.record(false, State::Ready, 2, 2).unwrap();
        assert_eq!((t.from, t.to), (State::Ready, State::Ejected));
    }

    #[test]
    fn gate_failure_resets_passes() {
        let mut g = Gate::default();
        g.record(true, State::Pending, 3, 2);
        g.record(true, State::Pending, 3, 2);
        g.record(false, State::Pending, 3, 2);
        g.record(true, State::Pending, 3, 2);
        assert_eq!(g.record(true, State::Pending, 3, 2), None);
        assert!(g.record(true, State::Pending, 3, 2).is_some());
    }

    #[test]
    fn gate_restarts_counting_after_external_change() {
        let mut g = Gate::default();
        for _ in 0..5 {
            g.record(true, State::Ready, 2, 2);
        }
        // The guard ejected the backend between two probes: it needs `rise` fresh passes.
        assert_eq!(g.record(true, State::Ejected, 2, 2), None);
        assert!(g.record(true, State::Ejected, 2, 2).is_some());
    }

    #[test]
    fn gate_never_moves_draining_or_disabled() {
        let mut g = Gate::default();
        for _ in 0..5 {
            assert_eq!(g.record(true, State::Disabled, 1, 1), None);
            assert_eq!(g.record(false, State::Draining, 1, 1), None);
        }
    }

    #[test]
    fn judge_reasons() {
        let c = cfg(Contract::KeySync);
        let ok = br#"{"key_sync": {"complete": true, "generation": 5, "keys": 100}}"#;
        assert_eq!(judge(&c, 200, ok, &NONE).1, Ok(()));
        assert_eq!(judge(&c, 503, ok, &NONE).1, Err("status 503".into()));
        assert_eq!(
            judge(&c, 200, b"{\"key_sync\": nope}", &NONE).1,
            Err("invalid json at line 1 column 15".into())
        );
        let incomplete = br#"{"key_sync": {"complete": false, "generation": 0, "keys": 1200}}"#;
        let (report, verdict) = judge(&c, 200, incomplete, &NONE);
        assert_eq!(verdict, Err("sync incomplete (1200 keys)".into()));
        assert_eq!(report.unwrap().keys, 1200);
        assert!(judge(&c, 200, b"{}", &NONE)
            .1
            .unwrap_err()
            .reason
            .starts_with("invalid key_sync report"));
        // A worker still syncing may leave out what it does not know yet; a complete report
        // may not.
        let partial = br#"{"key_sync": {"complete": false, "keys": 1200}}"#;
        assert_eq!(
            judge(&c, 200, partial, &NONE).1,
            Err("sync incomplete (1200 keys)".into())
        );
        let (report, verdict) = judge(&c, 503, br#"{"key_sync": {"complete": false}}"#, &NONE);
        assert_eq!(verdict, Err("status 503".into()));
        assert_eq!(report.unwrap().keys, 0);
        assert_eq!(
            judge(&c, 200, br#"{"key_sync": {"complete": false}}"#, &NONE).1,
            Err("sync incomplete".into())
        );
        assert_eq!(
            judge(
                &c,
                200,
                br#"{"key_sync": {"complete": true, "generation": 5}}"#,
                &NONE
            )
            .1,
            Err("invalid key_sync report: missing field `keys`".into())
        );
        // Unknown fields are ignored.
        let extra =
            br#"{"v": 2, "key_sync": {"complete": true, "generation": 5, "keys": 1, "x": 1}}"#;
        assert_eq!(judge(&c, 200, extra, &NONE).1, Ok(()));
    }

    #[test]
    fn status_contract_accepts_any_2xx() {
        let c = cfg(Contract::Status);
        assert_eq!(judge(&c, 204, b"", &NONE).1, Ok(()));
        assert_eq!(judge(&c, 500, b"", &NONE).1, Err("status 500".into()));
    }

    #[test]
    fn fleet_checks() {
        assert_eq!(check_fleet(&ks(1, 0), &NONE, 10, 0.98), Ok(()));
        let peers = Reference {
            newest: Some(52),
            median: Some(2000),
            mark: None,
        };
        assert_eq!(check_fleet(&ks(42, 2000), &peers, 10, 0.98), Ok(()));
        assert_eq!(
            check_fleet(&ks(40, 2000), &peers, 10, 0.98),
            Err("stale generation 40 < 52 - 10".into())
        );
        assert_eq!(
            check_fleet(&ks(52, 0), &peers, 10, 0.98),
            Err("too few keys 0 < 0.98 × 2000".into())
        );
        assert_eq!(check_fleet(&ks(52, 1960), &peers, 10, 0.98), Ok(()));
        assert!(check_fleet(&ks(52, 1959), &peers, 10, 0.98).is_err());
    }

    #[test]
    fn keys_that_collapse_at_an_unchanged_generation_fail_at_once() {
        let mark = Mark {
            generation: 7,
            keys: 2000,
        };
        // Every peer collapsed too: the peer values agree with the report, the mark does not.
        let all_collapsed = Reference {
            newest: Some(7),
            median: Some(0),
            mark: Some(mark),
        };
        let failure = check_fleet(&ks(7, 0), &all_collapsed, 10, 0.98).unwrap_err();
        assert_eq!(failure.reason, "keys fell 2000 → 0 at generation 7");
        assert_eq!(failure.kind, FailureKind::Collapse);
        assert_eq!(
            collapse(&ks(6, 100), mark, 10, 0.98).as_deref(),
            Some("keys fell 2000 → 100 at generation 6 (newest 7)")
        );
        // Within the ratio, a newer generation (accounts purged), or past the lag: no collapse.
        assert_eq!(collapse(&ks(7, 1960), mark, 10, 0.98), None);
        assert_eq!(collapse(&ks(8, 0), mark, 10, 0.98), None);
        assert_eq!(
            collapse(
                &ks(0, 0),
                Mark {
                    generation: 20,
                    keys: 5
                },
                10,
                0.98
            ),
            None
        );
        assert_eq!(check_fleet(&ks(8, 1000), &all_collapsed, 10, 0.98), Ok(()));
    }

    #[test]
    fn a_probe_slower_than_the_interval_delays_the_next_never_overlaps_it() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(200);
        // A quick probe: the next one starts an interval after this one started.
        let quick = next_probe_at(t0, t0 + Duration::from_millis(5), interval);
        assert_eq!(quick, t0 + interval);
        // A probe that took 500 ms: the next starts when it finished.
        let slow = t0 + Duration::from_millis(500);
        assert_eq!(next_probe_at(t0, slow, interval), slow);
    }

    #[test]
    fn a_refusal_holds_five_intervals_within_bounds() {
        assert_eq!(
            refusal_hold(Duration::from_millis(50)),
            Duration::from_secs(1)
        );
        assert_eq!(refusal_hold(Duration::from_secs(1)), Duration::from_secs(5));
        assert_eq!(
            refusal_hold(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
    }
}
