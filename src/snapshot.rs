//! The runtime view of a config: [`Snapshot`] (routes and pools, immutable, swapped atomically)
//! and [`Shared`] (what outlives snapshots: the backend registry, the event log, metrics).
//!
//! Building a snapshot reuses the [`Backend`] state object of every backend whose
//! `(pool, name, addr)` identity is unchanged, so a reload keeps readiness, counters and probe
//! history; new identities start `pending`. A snapshot is built from the validated config plus
//! the backends discovery found ([`Members`]); a change of DNS answers alone rebuilds only the
//! pools whose members changed and keeps the others' `Pool` objects as they are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, StatusCode};

use crate::access_log::AccessLog;
use crate::backend::{Backend, State};
use crate::balance::{Algorithm, Balancer, Endpoint, PickContext};
use crate::config::{Balance, Config, GuardConfig, HostMatch, PoolConfig, ProbeConfig};
use crate::counters::{BudgetLedger, RetryBudget};
use crate::events::EventLog;
use crate::fleet::Fleet;
use crate::memory::Memories;
use crate::metrics::{Metrics, PoolStats};

/// Backend identity: `(pool, name, addr)`.
pub type BackendKey = (String, String, SocketAddr);

/// A backend found by a discover source, added to its pool (after the static backends) when a
/// snapshot is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The discover source's name.
    pub source: Arc<str>,
    /// Backend name, unique in its pool.
    pub name: String,
    /// Worker address.
    pub addr: SocketAddr,
    /// Weight, 1..=1000.
    pub weight: u32,
}

/// Discovered backends by pool name, each list in the order the pool shows them.
pub type Members = BTreeMap<String, Vec<Member>>;

/// What one install changed.
#[derive(Debug)]
pub struct Installed {
    /// The snapshot now running.
    pub snapshot: Arc<Snapshot>,
    /// Backends that joined: new state objects, and removed ones taken back while draining.
    pub added: Vec<Arc<Backend>>,
    /// Backends that left (now draining).
    pub removed: Vec<Arc<Backend>>,
}

/// One pool at runtime.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    /// Backends in config order; shared state objects.
    pub backends: Vec<Arc<Backend>>,
    pub balancer: Balancer,
    /// Header hashed with `balance = "hash"`.
    pub hash_header: HeaderName,
    pub slow_start: Duration,
    /// How many more backends a request is tried on after one fails it (a connect failure;
    /// for a second opinion, a peer without an opinion).
    pub retries: u32,
    /// Probe settings (read by the prober each round).
    pub probe: ProbeConfig,
    pub guard: GuardConfig,
    /// Pre-rendered JSON body of the 503 answered when no backend is ready.
    pub unavailable_body: bytes::Bytes,
    /// Counters kept across reloads.
    pub stats: Arc<PoolStats>,
    /// Budget for connect retries and second opinions; its history is kept across reloads.
    pub budget: RetryBudget,
    /// Serialises passive ejection decisions in this pool (see `outlier::passive_eject`); kept
    /// across reloads, so requests still running on an older snapshot take the same lock.
    pub ejection_lock: Arc<Mutex<()>>,
    /// TLS to the workers, if configured.
    pub tls: Option<crate::upstream::UpstreamTls>,
    /// The fleet's key-sync aggregates, key-set epoch and fail-closed state; kept across
    /// reloads.
    pub fleet: Arc<Fleet>,
    /// The guard's credential memories; kept across reloads that do not resize them.
    pub memories: Arc<Memories>,
}

impl Pool {
    /// Picks a ready backend not in `exclude`.
    pub fn pick(&self, key: Option<&[u8]>, exclude: &[u64]) -> Option<&Arc<Backend>> {
        let cx = PickContext {
            key,
            exclude,
            slow_start: self.slow_start,
            now_ms: crate::clock::coarse_millis(),
        };
        self.balancer
            .pick(&self.backends, &cx)
            .map(|i| &self.backends[i])
    }

    /// Whether a guarded status needs a second opinion.
    pub fn is_guarded(&self, status: StatusCode) -> bool {
        self.guard.statuses.contains(&status)
    }

    /// Live entries of the guard's memories, `(remembered, accepted)`: a scan of both tables,
    /// for the admin API and metrics, never for the request path.
    pub fn memory_entries(&self) -> (usize, usize) {
        let (epoch, now) = (self.fleet.epoch(), crate::memory::coarse_now());
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let m = &self.guard.memory;
        (
            self.memories.rejected.len(epoch, now, secs(m.remember_ttl)),
            self.memories.accepted.len(epoch, now, secs(m.accepted_ttl)),
        )
    }
}

/// A backend as selection sees it.
impl Endpoint for Backend {
    #[inline]
    fn id(&self) -> u64 {
        self.id
    }
    #[inline]
    fn is_routable(&self) -> bool {
        Backend::is_routable(self)
    }
    #[inline]
    fn weight(&self) -> u32 {
        Backend::weight(self)
    }
    #[inline]
    fn effective_weight(&self, slow_start: Duration, now_ms: u64) -> u64 {
        Backend::effective_weight(self, slow_start, now_ms)
    }
    #[inline]
    fn in_flight(&self) -> u64 {
        Backend::in_flight(self)
    }
    fn ring_name(&self) -> &str {
        &self.name
    }
}

/// The selection algorithm a pool's `balance` names.
fn algorithm(balance: Balance) -> Algorithm {
    match balance {
        Balance::P2c => Algorithm::P2c,
        Balance::RoundRobin => Algorithm::RoundRobin,
        Balance::Hash => Algorithm::Hash,
    }
}

/// One route at runtime.
#[derive(Debug)]
pub struct Route {
    /// Host pattern; None matches any host.
    pub host: Option<HostMatch>,
    pub path_prefix: String,
    /// Index into [`Snapshot::pools`].
    pub pool: usize,
}

impl Route {
    fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            None => true,
            Some(HostMatch::Exact(h)) => h == host,
            Some(HostMatch::Wildcard(suffix)) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        };
        host_ok && path.starts_with(self.path_prefix.as_str())
    }

    /// Sort key: most specific first (exact host, then wildcard by length, then any host;
    /// within those, longer path prefixes first).
    fn specificity(&self) -> (u8, usize, usize) {
        let host = match &self.host {
            Some(HostMatch::Exact(_)) => (0, 0),
            Some(HostMatch::Wildcard(s)) => (1, usize::MAX - s.len()),
            None => (2, 0),
        };
        (host.0, host.1, usize::MAX - self.path_prefix.len())
    }
}

/// An immutable, complete runtime configuration. The request path reads one per request.
#[derive(Debug)]
pub struct Snapshot {
    /// Config generation (1 for the first config loaded).
    pub generation: u64,
    /// Routes, most specific first.
    pub routes: Vec<Route>,
    /// Pools, sorted by name.
    pub pools: Vec<Arc<Pool>>,
    /// The validated config this snapshot was built from.
    pub config: Arc<Config>,
    /// The discovered backends it was built with.
    pub members: Arc<Members>,
}

impl Snapshot {
    /// The pool serving `host` (lower-case, no port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Pool>> {
        self.routes
            .iter()
            .find(|r| r.matches(host, path))
            .map(|r| &self.pools[r.pool])
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    /// Every backend of every pool.
    pub fn backends(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.pools.iter().flat_map(|p| p.backends.iter())
    }
}

/// State shared by every part of a running syncgate, surviving reloads.
#[derive(Debug)]
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// Live backend state objects by identity (the snapshot's, plus removed ones still
    /// draining).
    registry: Mutex<HashMap<BackendKey, Arc<Backend>>>,
    /// What each pool keeps across reloads, by pool name (never forgotten: a pool's counters
    /// stay visible in `/metrics` after it left the config).
    pools: Mutex<HashMap<String, PoolKept>>,
    /// The log of backend state transitions that the admin API serves.
    pub events: EventLog,
    /// Process-wide counters (probes, reloads, ejections); per-pool ones are in the pools.
    pub metrics: Metrics,
    /// The access log: on/off and format as the proxy threads read them, its writer.
    pub access_log: AccessLog,
}

impl Shared {
    /// Builds the first snapshot from `config`.
    pub fn new(config: Config) -> Arc<Shared> {
        let registry = Mutex::new(HashMap::new());
        let pools = Mutex::new(HashMap::new());
        let snapshot = build(&registry, &pools, Arc::new(config), Arc::default(), 1, None).snapshot;
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            pools,
            events: EventLog::new(1000),
            metrics: Metrics::default(),
            access_log: AccessLog::default(),
        })
    }

    /// The current snapshot, to keep across awaits (one atomic increment, and its decrement
    /// when dropped); for a synchronous look, [`Shared::current`].
    #[inline]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current snapshot for a synchronous look, taking no reference count: every proxy
    /// thread incrementing and decrementing the snapshot's count moved its cache line between
    /// cores on every request. The guard holds one of the calling thread's few slots: never
    /// keep it across an `await` (take what outlives it, a pool's `Arc`, out of it).
    #[inline]
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Builds a snapshot for a new `config` (next generation) and the discovered `members`,
    /// reusing backend state by identity, and swaps it in.
    ///
    /// Callers serialise installs (`reload::Control` holds one lock across every install and
    /// the prober changes that follow), so that a reload and a DNS change never lose each
    /// other's update.
    pub fn install(&self, config: Config, members: Members) -> Installed {
        let generation = self.snapshot.load().generation + 1;
        self.swap(Arc::new(config), members, generation, None)
    }

    /// Rebuilds the running config's snapshot with new discovered `members`: the generation
    /// stays (it counts config loads), and pools whose members did not change keep their
    /// `Pool` objects (balancer tables included). Serialised like [`Shared::install`].
    pub fn install_members(&self, members: Members) -> Installed {
        let running = self.snapshot.load_full();
        self.swap(
            running.config.clone(),
            members,
            running.generation,
            Some(&running),
        )
    }

    fn swap(
        &self,
        config: Arc<Config>,
        members: Members,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Installed {
        let built = build(
            &self.registry,
            &self.pools,
            config,
            Arc::new(members),
            generation,
            previous,
        );
        let snapshot = Arc::new(built.snapshot);
        self.snapshot.store(snapshot.clone());
        for b in &built.removed {
            b.mark_removed();
            let reason = match &b.source {
                Some(source) if has_source(&snapshot.config, &b.pool, source) => {
                    tracing::info!(pool = %b.pool, source = %source, backend = %b.name, addr = %b.addr, "vanished");
                    format!("vanished from DNS (source {source})")
                }
                _ => "removed from config".to_owned(),
            };
            b.transition(
                &[
                    State::Pending,
                    State::Ready,
                    State::Ejected,
                    State::Disabled,
                ],
                State::Draining,
                &reason,
                &self.events,
            );
        }
        for b in &built.revived {
            let reason = match &b.source {
                Some(source) => {
                    tracing::info!(pool = %b.pool, source = %source, backend = %b.name, addr = %b.addr, "discovered");
                    format!("discovered again (source {source})")
                }
                None => "back in config".to_owned(),
            };
            b.transition(&[State::Draining], State::Pending, &reason, &self.events);
        }
        for b in &built.created {
            // The first snapshot is built by `Shared::new`, not here: every backend created
            // here joined a running syncgate, through DNS or a reload.
            let reason = match &b.source {
                Some(source) => {
                    tracing::info!(pool = %b.pool, source = %source, backend = %b.name, addr = %b.addr, "discovered");
                    format!("discovered (source {source})")
                }
                None => {
                    tracing::info!(pool = %b.pool, backend = %b.name, addr = %b.addr, "backend added to config");
                    "added to config".to_owned()
                }
            };
            self.events
                .record(&b.pool, &b.name, "absent", State::Pending.as_str(), &reason);
        }
        let mut added = built.created;
        added.extend(built.revived);
        Installed {
            snapshot,
            added,
            removed: built.removed,
        }
    }

    /// Forgets a removed backend once it is idle (or its drain deadline passed), unless it was
    /// taken back meanwhile (checked under the registry lock, which revival holds).
    pub fn forget(&self, backend: &Backend) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|_, b| b.id != backend.id || !b.is_removed());
    }

    /// Every pool's counters, sorted by pool name, including pools no longer configured.
    pub fn pool_stats(&self) -> Vec<(String, Arc<PoolStats>)> {
        let m = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m
            .iter()
            .map(|(k, v)| (k.clone(), v.stats.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every pool's fleet facts and memories, sorted by pool name, including pools no longer
    /// configured.
    pub fn pool_fleets(&self) -> Vec<(String, Arc<Fleet>, Arc<Memories>)> {
        let m = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m
            .iter()
            .map(|(k, v)| (k.clone(), v.fleet.clone(), v.memories.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every live backend, including removed ones still draining.
    pub fn all_backends(&self) -> Vec<Arc<Backend>> {
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.values().cloned().collect()
    }
}

/// What a pool keeps across reloads.
#[derive(Debug, Clone, Default)]
struct PoolKept {
    stats: Arc<PoolStats>,
    budget: Arc<BudgetLedger>,
    ejection_lock: Arc<Mutex<()>>,
    fleet: Arc<Fleet>,
    memories: Arc<Memories>,
}

/// Whether `pool` of `config` has a discover source named `source`.
fn has_source(config: &Config, pool: &str, source: &str) -> bool {
    config
        .pools
        .iter()
        .any(|p| p.name == pool && p.discover.iter().any(|d| d.name == source))
}

/// A built snapshot and how its backends differ from the registry's.
struct Built {
    snapshot: Snapshot,
    /// New state objects.
    created: Vec<Arc<Backend>>,
    /// Removed backends taken back (no longer marked removed; still `draining`).
    revived: Vec<Arc<Backend>>,
    /// Backends of the registry the snapshot no longer has (not yet marked removed).
    removed: Vec<Arc<Backend>>,
}

/// Builds a snapshot. Holds the registry lock for the whole build so that two concurrent
/// builds cannot both create a state object for the same identity. With `previous` built from
/// the same config, a pool whose members are unchanged is taken over as it is.
fn build(
    registry: &Mutex<HashMap<BackendKey, Arc<Backend>>>,
    kept: &Mutex<HashMap<String, PoolKept>>,
    config: Arc<Config>,
    members: Arc<Members>,
    generation: u64,
    previous: Option<&Snapshot>,
) -> Built {
    let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
    let mut keep: HashMap<BackendKey, Arc<Backend>> = HashMap::new();
    let mut created = Vec::new();
    let mut revived = Vec::new();
    let previous = previous.filter(|p| Arc::ptr_eq(&p.config, &config));
    let pools: Vec<Arc<Pool>> = config
        .pools
        .iter()
        .map(|pc| {
            let discovered = members.get(&pc.name).map_or(&[][..], Vec::as_slice);
            let unchanged = previous.and_then(|p| {
                let before = p.members.get(&pc.name).map_or(&[][..], Vec::as_slice);
                (before == discovered).then(|| p.pool(&pc.name)).flatten()
            });
            if let Some(pool) = unchanged {
                for b in &pool.backends {
                    keep.insert((pc.name.clone(), b.name.to_string(), b.addr), b.clone());
                }
                return pool.clone();
            }
            let pool_kept = {
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                let entry = kept.entry(pc.name.clone()).or_default();
                let m = &pc.guard.memory;
                if !entry.memories.fits(m.remember_max, m.accepted_max) {
                    entry.memories = Arc::new(Memories::new(m.remember_max, m.accepted_max));
                }
                entry.clone()
            };
            let mut changes = Changes {
                reg: &mut reg,
                keep: &mut keep,
                created: &mut created,
                revived: &mut revived,
            };
            Arc::new(build_pool(pc, discovered, pool_kept, &mut changes))
        })
        .collect();
    let removed: Vec<Arc<Backend>> = reg
        .iter()
        .filter(|(k, b)| !keep.contains_key(*k) && !b.is_removed())
        .map(|(_, b)| b.clone())
        .collect();
    // Removed backends stay in the registry (draining) until `forget`.
    reg.extend(keep);
    let mut routes: Vec<Route> = config
        .routes
        .iter()
        .filter_map(|r| {
            let pool = pools.iter().position(|p| *p.name == *r.pool)?;
            Some(Route {
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                pool,
            })
        })
        .collect();
    // Stable: equally specific routes keep file order.
    routes.sort_by_key(Route::specificity);
    Built {
        snapshot: Snapshot {
            generation,
            routes,
            pools,
            config,
            members,
        },
        created,
        revived,
        removed,
    }
}

/// Where [`build_pool`] records the state objects it uses, creates and takes back.
struct Changes<'a> {
    reg: &'a mut HashMap<BackendKey, Arc<Backend>>,
    keep: &'a mut HashMap<BackendKey, Arc<Backend>>,
    created: &'a mut Vec<Arc<Backend>>,
    revived: &'a mut Vec<Arc<Backend>>,
}

impl Changes<'_> {
    /// The state object for an identity: the registry's (taken back if it was removed and is
    /// still draining), or a new one from `create`.
    fn backend(
        &mut self,
        key: BackendKey,
        weight: u32,
        create: impl FnOnce() -> Backend,
    ) -> Arc<Backend> {
        let backend = match self.reg.get(&key) {
            Some(b) => {
                if b.is_removed() {
                    b.revive();
                    self.revived.push(b.clone());
                }
                b.set_weight(weight);
                b.clone()
            }
            None => {
                let b = Arc::new(create());
                self.created.push(b.clone());
                b
            }
        };
        self.keep.insert(key, backend.clone());
        backend
    }
}

/// One pool: its static backends in file order, then the discovered `members` whose name and
/// address no backend before them has (a static backend wins over DNS, an earlier source over a
/// later one).
fn build_pool(
    pc: &PoolConfig,
    members: &[Member],
    kept: PoolKept,
    changes: &mut Changes<'_>,
) -> Pool {
    let mut backends: Vec<Arc<Backend>> = pc
        .backends
        .iter()
        .map(|bc| {
            let key = (pc.name.clone(), bc.name.clone(), bc.addr);
            changes.backend(key, bc.weight, || {
                Backend::new(&pc.name, &bc.name, bc.addr, bc.weight)
            })
        })
        .collect();
    let mut names: HashSet<&str> = pc.backends.iter().map(|b| b.name.as_str()).collect();
    let mut addrs: HashSet<SocketAddr> = pc.backends.iter().map(|b| b.addr).collect();
    for m in members {
        if !names.insert(&m.name) || !addrs.insert(m.addr) {
            tracing::debug!(pool = %pc.name, source = %m.source, addr = %m.addr, "discovered address already in the pool; skipped");
            continue;
        }
        let key = (pc.name.clone(), m.name.clone(), m.addr);
        backends.push(changes.backend(key, m.weight, || {
            Backend::new(&pc.name, &m.name, m.addr, m.weight).with_source(m.source.clone())
        }));
    }
    let unavailable_body = serde_json::to_vec(&serde_json::json!({
        "error": "no ready backend",
        "pool": pc.name,
    }))
    .unwrap_or_default()
    .into();
    Pool {
        name: pc.name.as_str().into(),
        balancer: Balancer::new(algorithm(pc.balance), &backends),
        backends,
        hash_header: pc.hash_header.clone(),
        slow_start: pc.slow_start,
        retries: pc.retries,
        probe: pc.probe.clone(),
        guard: pc.guard.clone(),
        unavailable_body,
        stats: kept.stats,
        budget: RetryBudget::new(
            kept.budget,
            pc.guard.retry_budget_ratio,
            pc.guard.retry_budget_min_per_sec,
            pc.guard.retry_budget_window,
        ),
        ejection_lock: kept.ejection_lock,
        fleet: kept.fleet,
        memories: kept.memories,
        tls: pc
            .upstream_tls
            .as_ref()
            .map(crate::upstream::UpstreamTls::new),
    }
}
