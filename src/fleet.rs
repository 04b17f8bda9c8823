//! What a pool knows about its fleet's key sync as a whole, kept by pool name across reloads:
//! the reference values of the readiness checks, the key count at the newest generation, the
//! key-set epoch of the guard's memories, and whether the pool is failing closed.
//!
//! Probes record their reports here ([`Fleet::record`]) and read the reference values back
//! ([`Fleet::reference`]) in O(1) from a [`Summary`] that is recomputed lazily: only when a
//! report or a backend state changed, and at most once per [`RECOMPUTE_EVERY`], so a pool of
//! thousands of backends does not sort every peer's report for every probe.
//!
//! Two facts are state rather than summaries of the current reports:
//!
//! - **The newest generation** carried by a report that passed its probe. When it moves, the
//!   key set moved, and the [`Fleet::epoch`] moves with it: the guard's memories compare
//!   entries with the epoch, so they forget in O(1).
//! - **The mark**: the key count at that generation, the lower median of the last *passing*
//!   report of each backend at that generation. A report never passes by collapsing, so when
//!   every worker loses its keys at once the mark still says what they held, and a report that
//!   keeps the generation but falls below `min_key_ratio` of the mark fails
//!   (`keys fell 2000 → 0 at generation 7`). A report with a newer generation starts a new mark.
//!   It takes a report that passes the peer checks to move either fact, and the median keeps
//!   one worker that overstates its keys from raising the mark.
//!
//! The pool **fails closed** while every probed backend is out and at least one collapsed, or
//! while the guard refuses guarded answers for credentials accepted at the current generation
//! ([`Fleet::note_refusal`]); [`Fleet::review`] logs one event when that starts and one when
//! it ends, and keeps the reason the admin API shows current in between (a collapse first).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use crate::backend::{self, Backend, KeySync, State};
use crate::clock::now_millis;
use crate::events::EventLog;

/// The summary is recomputed at most this often (and only when something changed).
pub const RECOMPUTE_EVERY: Duration = Duration::from_millis(10);

/// The key count of a pool at its newest generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Mark {
    /// The newest generation a passing report carried.
    pub generation: u64,
    /// The lower median of the keys reported at it, by the last passing report of each backend.
    pub keys: u64,
}

/// The reference values a backend's report is checked against, its own report left out of the
/// peer values (not out of the mark: a worker's own past counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reference {
    /// The newest generation among the reference peers' complete reports.
    pub newest: Option<u64>,
    /// The lower median of their keys.
    pub median: Option<u64>,
    /// The pool's mark.
    pub mark: Option<Mark>,
}

/// How a probe ended, as the fleet records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// It passed: a complete report becomes the backend's last passing one.
    Passed,
    /// It failed for another reason than a collapse.
    Failed,
    /// Its report kept the generation but lost its keys: this reason.
    Collapsed(String),
}

/// Why a pool fails closed, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailClosed {
    /// One sentence, starting `fleet-wide key loss suspected: `.
    pub reason: String,
    /// When it started.
    pub since: SystemTime,
}

/// A pool's fleet facts for the admin API and metrics.
#[derive(Debug, Clone)]
pub struct FleetView {
    /// The mark, if any report passed yet.
    pub mark: Option<Mark>,
    /// The key-set epoch: how often the newest generation moved (and the memories forgot).
    pub epoch: u64,
    /// Probes that failed by a collapse.
    pub collapses: u64,
    /// Times the pool started failing closed.
    pub fail_closed_episodes: u64,
    /// Whether it fails closed now, and why.
    pub fail_closed: Option<FailClosed>,
}

/// One pool's fleet facts. The request path only reads [`Fleet::epoch`] and calls
/// [`Fleet::note_refusal`] (atomics); everything else is the control plane's.
#[derive(Debug, Default)]
pub struct Fleet {
    inner: Mutex<Inner>,
    epoch: AtomicU64,
    /// `now_millis` of the last refused guarded answer, 0 for never.
    last_refusal_ms: AtomicU64,
    collapses: AtomicU64,
    episodes: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    members: HashMap<u64, Member>,
    /// The newest generation a passing report carried.
    newest: Option<u64>,
    summary: Summary,
    /// A report or a passing report changed since the summary was made.
    dirty: bool,
    /// `now_millis` when the summary was made (0: never).
    computed_ms: u64,
    /// [`backend::transitions`] when the summary was made.
    transitions: u64,
    fail_closed: Option<FailClosed>,
}

/// What the fleet keeps of one backend.
#[derive(Debug)]
struct Member {
    backend: Weak<Backend>,
    /// The last report, passing or not.
    report: Option<KeySync>,
    /// The last complete report that passed its probe.
    passed: Option<KeySync>,
    /// The reason of the last probe, when it failed by a collapse.
    collapsed: Option<String>,
}

/// Reports of one class of peers, sorted for the median, with each backend's own contribution
/// so that it can be left out in O(1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefSet {
    keys: Vec<u64>,
    by_id: HashMap<u64, KeySync>,
    /// The two newest generations, with their backends.
    top: [Option<(u64, u64)>; 2],
}

impl RefSet {
    /// A set of `(backend id, report)`.
    pub fn new(reports: impl IntoIterator<Item = (u64, KeySync)>) -> RefSet {
        let mut set = RefSet::default();
        for (id, r) in reports {
            set.keys.push(r.keys);
            set.by_id.insert(id, r);
            let entry = Some((r.generation, id));
            if set.top[0].is_none_or(|(g, _)| r.generation > g) {
                set.top[1] = set.top[0];
                set.top[0] = entry;
            } else if set.top[1].is_none_or(|(g, _)| r.generation > g) {
                set.top[1] = entry;
            }
        }
        set.keys.sort_unstable();
        set
    }

    /// Whether the set holds no report but `id`'s.
    fn is_empty_without(&self, id: u64) -> bool {
        self.keys.len() <= usize::from(self.by_id.contains_key(&id))
    }

    /// The newest generation of the set without `id`'s report.
    pub fn newest_without(&self, id: u64) -> Option<u64> {
        self.top
            .iter()
            .flatten()
            .find(|(_, owner)| *owner != id)
            .map(|(g, _)| *g)
    }

    /// The lower median of the keys without `id`'s report: with `x` its keys and `m` the
    /// median's place among the others, the others' `m`-th value is the `m+1`-th of all when
    /// `x` sorts at or before it, else the `m`-th.
    pub fn median_without(&self, id: u64) -> Option<u64> {
        let s = &self.keys;
        match self.by_id.get(&id) {
            None => s.get(s.len().checked_sub(1)? / 2).copied(),
            Some(own) => {
                let m = s.len().checked_sub(2)? / 2;
                let at = *s.get(m)?;
                if own.keys <= at {
                    s.get(m + 1).copied()
                } else {
                    Some(at)
                }
            }
        }
    }
}

/// The lazily computed picture of the fleet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Summary {
    /// Complete reports of ready backends.
    ready: RefSet,
    /// Complete reports of pending and ejected backends (the cold-start reference).
    others: RefSet,
    mark: Option<Mark>,
    /// Backends that may serve (ready), and that are in the fleet (ready, pending, ejected).
    routable: usize,
    in_fleet: usize,
    /// Backends of the fleet whose last probe collapsed, and the first one's reason.
    collapsed: usize,
    collapse: Option<String>,
}

/// The lower median of `keys` (sorted here).
fn lower_median(mut keys: Vec<u64>) -> Option<u64> {
    keys.sort_unstable();
    keys.get(keys.len().checked_sub(1)? / 2).copied()
}

impl Summary {
    /// The summary of `members` (pruning those whose backend left), with `newest` the newest
    /// passing generation.
    fn compute(members: &mut HashMap<u64, Member>, newest: Option<u64>) -> Summary {
        members.retain(|_, m| m.backend.upgrade().is_some_and(|b| !b.is_removed()));
        let mut ready = Vec::new();
        let mut others = Vec::new();
        let mut marks = Vec::new();
        let mut summary = Summary::default();
        let mut ids: Vec<&u64> = members.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let m = &members[id];
            let Some(b) = m.backend.upgrade() else {
                continue;
            };
            if let (Some(p), Some(n)) = (m.passed, newest) {
                if p.generation == n {
                    marks.push(p.keys);
                }
            }
            let state = b.state();
            let class = match state {
                State::Ready => &mut ready,
                State::Pending | State::Ejected => &mut others,
                State::Draining | State::Disabled => continue,
            };
            summary.in_fleet += 1;
            summary.routable += usize::from(state == State::Ready);
            if let Some(r) = m.report.filter(|r| r.complete) {
                class.push((*id, r));
            }
            if let Some(reason) = &m.collapsed {
                summary.collapsed += 1;
                summary.collapse.get_or_insert_with(|| reason.clone());
            }
        }
        summary.ready = RefSet::new(ready);
        summary.others = RefSet::new(others);
        summary.mark = newest
            .zip(lower_median(marks))
            .map(|(generation, keys)| Mark { generation, keys });
        summary
    }

    /// The reference for backend `id`: its ready peers, or with none of them, its pending and
    /// ejected peers (draining and disabled ones are on their way out).
    fn reference(&self, id: u64) -> Reference {
        let peers = if self.ready.is_empty_without(id) {
            &self.others
        } else {
            &self.ready
        };
        Reference {
            newest: peers.newest_without(id),
            median: peers.median_without(id),
            mark: self.mark,
        }
    }
}

/// How the newest generation moves with a passing report at `generation`: up with a newer
/// one, and down with one so far behind (more than `lag`) that it can only have passed because
/// the whole fleet went back (a rebuilt key database). Pure.
pub fn next_newest(newest: Option<u64>, generation: u64, lag: u64) -> Option<u64> {
    match newest {
        None => Some(generation),
        Some(n) if generation > n || generation.saturating_add(lag) < n => Some(generation),
        Some(n) => Some(n),
    }
}

/// The fail-closed state a pool should be in. Pure: `summary` facts, and whether a guarded
/// answer was refused lately.
fn should_fail_closed(
    routable: usize,
    collapsed: usize,
    in_fleet: usize,
    collapse: Option<&str>,
    refused_lately: bool,
    newest: Option<u64>,
) -> Option<String> {
    if routable == 0 && collapsed > 0 {
        let why = collapse.unwrap_or("keys fell");
        return Some(format!(
            "fleet-wide key loss suspected: {why} ({collapsed} of {in_fleet} backends)"
        ));
    }
    if refused_lately {
        let at = newest.map_or_else(String::new, |g| format!(" at generation {g}"));
        return Some(format!(
            "fleet-wide key loss suspected: 401 for credentials accepted{at}; answered 503"
        ));
    }
    None
}

impl Fleet {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key-set epoch, for the guard's memories (request path: one atomic load).
    #[inline]
    pub fn epoch(&self) -> u32 {
        // Entries keep 32 bits: equal only after 2^32 moves within their TTL.
        self.epoch.load(Ordering::Relaxed) as u32
    }

    /// The guard refused a guarded answer for a credential accepted at the current generation
    /// (request path: one atomic store).
    pub fn note_refusal(&self) {
        self.last_refusal_ms.store(now_millis(), Ordering::Relaxed);
    }

    /// The summary, recomputed when something changed and the last one is old enough (or,
    /// with `now_or_never`, whenever something changed: for the admin API, which is rare).
    fn summary<'a>(&self, inner: &'a mut Inner, now_or_never: bool) -> &'a Summary {
        let transitions = backend::transitions();
        let now = now_millis();
        let changed = inner.dirty || inner.transitions != transitions || inner.computed_ms == 0;
        let due = now_or_never
            || now.saturating_sub(inner.computed_ms) >= RECOMPUTE_EVERY.as_millis() as u64;
        if changed && due {
            inner.summary = Summary::compute(&mut inner.members, inner.newest);
            inner.dirty = false;
            inner.transitions = transitions;
            inner.computed_ms = now;
        }
        &inner.summary
    }

    /// The reference values for `backend_id`'s next report.
    pub fn reference(&self, backend_id: u64) -> Reference {
        let mut inner = self.inner();
        self.summary(&mut inner, false).reference(backend_id)
    }

    /// Records a probe of `backend`: its report (none when the probe got none) and how it
    /// ended. A passing complete report may move the newest generation, and with it the epoch.
    pub fn record(
        &self,
        backend: &Arc<Backend>,
        report: Option<KeySync>,
        probed: Probed,
        lag: u64,
    ) {
        let mut inner = self.inner();
        let member = inner.members.entry(backend.id).or_insert_with(|| Member {
            backend: Arc::downgrade(backend),
            report: None,
            passed: None,
            collapsed: None,
        });
        let mut dirty = false;
        if report.is_some() && member.report != report {
            member.report = report;
            dirty = true;
        }
        let passed = report.filter(|r| r.complete && probed == Probed::Passed);
        if passed.is_some() && member.passed != passed {
            member.passed = passed;
            dirty = true;
        }
        let collapsed = match probed {
            Probed::Collapsed(reason) => {
                self.collapses.fetch_add(1, Ordering::Relaxed);
                Some(reason)
            }
            Probed::Passed | Probed::Failed => None,
        };
        if member.collapsed != collapsed {
            member.collapsed = collapsed;
            dirty = true;
        }
        if let Some(p) = passed {
            let newest = next_newest(inner.newest, p.generation, lag);
            if newest != inner.newest {
                if inner.newest.is_some() {
                    self.epoch.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(pool = %backend.pool, generation = p.generation, "key-set generation moved; the guard's memories forget");
                }
                inner.newest = newest;
                dirty = true;
            }
        }
        inner.dirty |= dirty;
    }

    /// Moves the pool into or out of failing closed, given that a guarded answer refused
    /// within `hold` keeps it closed; logs and records one event per change.
    pub fn review(&self, pool: &str, events: &EventLog, hold: Duration) {
        let last = self.last_refusal_ms.load(Ordering::Relaxed);
        let refused_lately =
            last != 0 && now_millis().saturating_sub(last) < hold.as_millis() as u64;
        let mut inner = self.inner();
        let newest = inner.newest;
        let s = self.summary(&mut inner, false);
        let should = should_fail_closed(
            s.routable,
            s.collapsed,
            s.in_fleet,
            s.collapse.as_deref(),
            refused_lately,
            newest,
        );
        let routable = s.routable;
        match (&inner.fail_closed, should) {
            (None, Some(reason)) => {
                tracing::error!(pool, reason = %reason, "pool fails closed");
                events.record(pool, "", "serving", "fail_closed", &reason);
                self.episodes.fetch_add(1, Ordering::Relaxed);
                inner.fail_closed = Some(FailClosed {
                    reason,
                    since: SystemTime::now(),
                });
            }
            (Some(_), None) => {
                let reason = format!("keys are back: {routable} backends ready");
                tracing::warn!(pool, reason = %reason, "pool serves again");
                events.record(pool, "", "fail_closed", "serving", &reason);
                inner.fail_closed = None;
            }
            // Still closed, for another reason now (refusals first, then the probes saw the
            // collapse): the admin API shows the current one; the event log keeps the first.
            (Some(current), Some(reason)) if current.reason != reason => {
                tracing::warn!(pool, reason = %reason, "pool fails closed");
                if let Some(fc) = inner.fail_closed.as_mut() {
                    fc.reason = reason;
                }
            }
            _ => {}
        }
    }

    /// The pool's fleet facts now.
    pub fn view(&self) -> FleetView {
        let mut inner = self.inner();
        let mark = self.summary(&mut inner, true).mark;
        FleetView {
            mark,
            epoch: self.epoch.load(Ordering::Relaxed),
            collapses: self.collapses.load(Ordering::Relaxed),
            fail_closed_episodes: self.episodes.load(Ordering::Relaxed),
            fail_closed: inner.fail_closed.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ks(generation: u64, keys: u64) -> KeySync {
        KeySync {
            complete: true,
            generation,
            keys,
        }
    }

    #[test]
    fn the_median_without_a_backend_is_the_median_of_the_others() {
        // Every subset against the direct computation, duplicates included.
        let reports = [(1, 10), (2, 20), (3, 20), (4, 5), (5, 1000)];
        for n in 0..=reports.len() {
            let set = RefSet::new(reports[..n].iter().map(|&(id, k)| (id, ks(1, k))));
            for leave_out in 0..=6 {
                let others: Vec<u64> = reports[..n]
                    .iter()
                    .filter(|(id, _)| *id != leave_out)
                    .map(|(_, k)| *k)
                    .collect();
                assert_eq!(
                    set.median_without(leave_out),
                    lower_median(others.clone()),
                    "{n} reports without {leave_out}: {others:?}"
                );
            }
        }
    }

    #[test]
    fn the_newest_generation_without_a_backend() {
        let set = RefSet::new([(1, ks(50, 1)), (2, ks(52, 1)), (3, ks(51, 1))]);
        assert_eq!(set.newest_without(9), Some(52));
        assert_eq!(set.newest_without(2), Some(51));
        let one = RefSet::new([(1, ks(50, 1))]);
        assert_eq!(one.newest_without(1), None);
        assert!(one.is_empty_without(1));
        assert!(!one.is_empty_without(2));
    }

    #[test]
    fn the_newest_generation_moves_up_and_back_only_past_the_lag() {
        assert_eq!(next_newest(None, 7, 10), Some(7));
        assert_eq!(next_newest(Some(7), 8, 10), Some(8));
        assert_eq!(next_newest(Some(8), 7, 10), Some(8), "a laggard");
        assert_eq!(next_newest(Some(50), 40, 10), Some(50));
        assert_eq!(
            next_newest(Some(50), 39, 10),
            Some(39),
            "the fleet went back"
        );
    }

    #[test]
    fn failing_closed_needs_an_empty_pool_with_a_collapse_or_a_recent_refusal() {
        let fc = |routable, collapsed, refused| {
            should_fail_closed(
                routable,
                collapsed,
                3,
                Some("keys fell 2000 → 0 at generation 7"),
                refused,
                Some(7),
            )
        };
        assert_eq!(
            fc(0, 3, false).as_deref(),
            Some("fleet-wide key loss suspected: keys fell 2000 → 0 at generation 7 (3 of 3 backends)")
        );
        assert_eq!(fc(1, 2, false), None, "a ready backend still serves");
        assert_eq!(fc(0, 0, false), None, "an empty pool for other reasons");
        assert_eq!(
            fc(3, 0, true).as_deref(),
            Some("fleet-wide key loss suspected: 401 for credentials accepted at generation 7; answered 503")
        );
    }

    /// A backend in `state` named `name`.
    fn backend(name: &str, state: State, events: &EventLog) -> Arc<Backend> {
        let b = Arc::new(Backend::new(
            "push",
            name,
            "127.0.0.1:1".parse().unwrap(),
            1,
        ));
        if state != State::Pending {
            assert!(b.transition(&[State::Pending], state, "test", events));
        }
        b
    }

    /// A fleet whose summary is always fresh (tests do not wait for the throttle).
    fn fresh(fleet: &Fleet) {
        fleet.inner().computed_ms = 0;
    }

    #[test]
    fn reference_prefers_ready_peers_and_skips_leaving_ones() {
        let events = EventLog::new(16);
        let fleet = Fleet::default();
        let me = backend("me", State::Pending, &events);
        let pending = backend("pending", State::Pending, &events);
        let draining = backend("draining", State::Draining, &events);
        let disabled = backend("disabled", State::Disabled, &events);
        for (b, keys) in [(&me, 10), (&pending, 1000), (&draining, 5), (&disabled, 6)] {
            fleet.record(b, Some(ks(7, keys)), Probed::Failed, 10);
        }
        fresh(&fleet);
        // Cold start: no ready peer; the pending one counts, the leaving ones do not.
        assert_eq!(fleet.reference(me.id).median, Some(1000));
        // Once a peer is ready, only ready peers count.
        let ready = backend("ready", State::Ready, &events);
        fleet.record(&ready, Some(ks(8, 900)), Probed::Passed, 10);
        fresh(&fleet);
        let r = fleet.reference(me.id);
        assert_eq!((r.newest, r.median), (Some(8), Some(900)));
        // The ready backend itself is compared with the others.
        assert_eq!(fleet.reference(ready.id).median, Some(10));
    }

    #[test]
    fn the_mark_survives_a_collapse_and_moves_with_a_newer_generation() {
        let events = EventLog::new(16);
        let fleet = Fleet::default();
        let ws: Vec<_> = (0..3)
            .map(|i| backend(&format!("w{i}"), State::Ready, &events))
            .collect();
        for w in &ws {
            fleet.record(w, Some(ks(7, 2000)), Probed::Passed, 10);
        }
        fresh(&fleet);
        let mark = Mark {
            generation: 7,
            keys: 2000,
        };
        assert_eq!(fleet.reference(ws[0].id).mark, Some(mark));
        assert_eq!(
            fleet.epoch(),
            0,
            "the first generation seen forgets nothing"
        );
        // Every worker reports 0 keys at generation 7: their reports fail, the mark stays.
        for w in &ws {
            let why = "keys fell 2000 → 0 at generation 7".to_string();
            fleet.record(w, Some(ks(7, 0)), Probed::Collapsed(why), 10);
        }
        fresh(&fleet);
        assert_eq!(fleet.reference(ws[0].id).mark, Some(mark));
        assert_eq!(fleet.view().collapses, 3);
        // One worker overstating its keys at generation 7 does not raise the mark.
        fleet.record(&ws[0], Some(ks(7, 1_000_000)), Probed::Passed, 10);
        fresh(&fleet);
        assert_eq!(fleet.reference(ws[1].id).mark, Some(mark));
        // A purge with a newer generation starts a new mark and moves the epoch.
        fleet.record(&ws[1], Some(ks(8, 1000)), Probed::Passed, 10);
        fresh(&fleet);
        assert_eq!(
            fleet.reference(ws[1].id).mark,
            Some(Mark {
                generation: 8,
                keys: 1000
            })
        );
        assert_eq!(fleet.epoch(), 1);
        // A failing report with a newer generation moves nothing.
        fleet.record(&ws[2], Some(ks(1_000_000, 3)), Probed::Failed, 10);
        assert_eq!(fleet.epoch(), 1);
    }

    #[test]
    fn fail_closed_starts_and_ends_with_one_event_each() {
        let events = EventLog::new(16);
        let fleet = Fleet::default();
        let w = backend("w1", State::Ready, &events);
        fleet.record(&w, Some(ks(7, 2000)), Probed::Passed, 10);
        let hold = Duration::from_secs(5);
        fresh(&fleet);
        fleet.review("push", &events, hold);
        assert!(fleet.view().fail_closed.is_none());
        let why = "keys fell 2000 → 0 at generation 7".to_string();
        fleet.record(&w, Some(ks(7, 0)), Probed::Collapsed(why), 10);
        assert!(w.transition(&[State::Ready], State::Ejected, "x", &events));
        for _ in 0..3 {
            fresh(&fleet);
            fleet.review("push", &events, hold);
        }
        let view = fleet.view();
        assert_eq!(
            view.fail_closed.map(|f| f.reason).as_deref(),
            Some("fleet-wide key loss suspected: keys fell 2000 → 0 at generation 7 (1 of 1 backends)")
        );
        assert_eq!(view.fail_closed_episodes, 1);
        fleet.record(&w, Some(ks(7, 2000)), Probed::Passed, 10);
        assert!(w.transition(&[State::Ejected], State::Ready, "x", &events));
        fresh(&fleet);
        fleet.review("push", &events, hold);
        assert!(fleet.view().fail_closed.is_none());
        let pool_events: Vec<_> = events
            .since(0)
            .into_iter()
            .filter(|e| e.backend.is_empty())
            .map(|e| (e.from, e.to, e.reason))
            .collect();
        assert_eq!(pool_events.len(), 2, "{pool_events:?}");
        assert_eq!(pool_events[0].1, "fail_closed");
        assert_eq!(
            (pool_events[1].0, pool_events[1].2.as_str()),
            ("fail_closed", "keys are back: 1 backends ready")
        );
    }

    #[test]
    fn a_refusal_keeps_the_pool_closed_for_the_hold() {
        let events = EventLog::new(16);
        let fleet = Fleet::default();
        let w = backend("w1", State::Ready, &events);
        fleet.record(&w, Some(ks(7, 2000)), Probed::Passed, 10);
        fleet.note_refusal();
        fleet.review("push", &events, Duration::from_secs(60));
        assert!(fleet.view().fail_closed.is_some());
        // A hold of zero: the refusal is no longer recent.
        fleet.review("push", &events, Duration::ZERO);
        assert!(fleet.view().fail_closed.is_none());
    }
}
