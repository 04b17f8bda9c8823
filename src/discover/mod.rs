//! Discovery: backends found through DNS (`[[pools.NAME.discover]]`).
//!
//! Each source runs one task on the control runtime (never on the request path) that resolves
//! its name every `interval` (`resolve.rs`, hickory-resolver without cache) and sends the
//! [`Resolution`] to the control plane, which [`Discovery::record`]s it and, when the address
//! set changed, installs a snapshot built from the running config plus [`Discovery::members`]:
//! the same path as a config edit (`reload::Control` serialises both). So an address that
//! appears is a new backend that starts `pending` and is admitted only by its probes; one that
//! disappears drains; one that comes back while still draining keeps its state object.
//!
//! DNS failure never empties a pool: a timeout, SERVFAIL, NXDOMAIN or empty answer keeps the
//! last known set (logged once, counted, and shown as `last_error`). A source that never
//! resolved has no addresses; that is no config error and the rest of the config runs.
//!
//! A discovered backend is named `<source>-<ip>-<port>` with `.` and `:` of the IP written `-`
//! ([`member_name`]): deterministic, so the same address keeps its identity across
//! resolutions, restarts and syncgate instances, and URL-safe, so
//! `POST /api/backends/{pool}/{name}/drain` needs no escaping.

mod resolve;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::rfc3339;
use crate::config::{Config, DiscoverConfig};
use crate::metrics::Metrics;
use crate::snapshot::{Member, Members};

/// A resolution never takes longer than this, however long `interval` is.
const MAX_RESOLVE_TIME: Duration = Duration::from_secs(5);
/// ... nor gives up before this, however short `interval` is.
const MIN_RESOLVE_TIME: Duration = Duration::from_secs(1);
/// Highest backend weight (as for static backends).
const MAX_WEIGHT: u32 = 1000;

/// One address a source found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// The backend's address.
    pub addr: SocketAddr,
    /// The SRV record's weight (`srv` sources only).
    pub srv_weight: Option<u16>,
}

/// How a resolution ended: the `result` label of `syncgate_discovery_resolutions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Addresses found.
    Ok,
    /// The name exists but has no usable record.
    Empty,
    /// The name does not exist.
    NxDomain,
    /// The server answered SERVFAIL.
    ServFail,
    /// No answer in time.
    Timeout,
    /// Anything else: refused, network error, unreadable resolver configuration.
    Error,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Empty => "empty",
            Outcome::NxDomain => "nxdomain",
            Outcome::ServFail => "servfail",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// Why a resolution found no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Its class.
    pub outcome: Outcome,
    /// What the admin API and the log say (`workers.test does not exist (NXDOMAIN)`).
    pub message: String,
}

/// What a source task reports after each resolution.
#[derive(Debug)]
pub struct Resolution {
    /// The source instance that resolved (a restarted source has a new id; a stale report is
    /// ignored).
    source: u64,
    /// When the resolution ended.
    at: SystemTime,
    /// How long it took.
    took: Duration,
    /// Sorted addresses without duplicates, or why there are none.
    answer: Result<Vec<Found>, Failure>,
}

/// One running source.
#[derive(Debug)]
struct Source {
    id: u64,
    pool: String,
    config: DiscoverConfig,
    token: CancellationToken,
    /// The last known set: sorted, never replaced by a failed resolution.
    addresses: Vec<Found>,
    last_resolved: Option<SystemTime>,
    last_attempt: Option<SystemTime>,
    last_error: Option<String>,
}

/// A source as the admin API shows it (`GET /api/backends`, `pools.{pool}.discover`).
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// The source's name (prefix of its backends' names).
    pub name: String,
    /// `dns` or `srv`.
    pub kind: &'static str,
    /// The value of `dns` or `srv`.
    pub target: String,
    /// `IP:port` of the server asked, or `system`.
    pub resolver: String,
    /// Time between resolutions, milliseconds.
    pub interval_ms: u64,
    /// When it last resolved successfully (RFC 3339), null if never.
    pub last_resolved: Option<String>,
    /// When it last tried (RFC 3339), null if never.
    pub last_attempt: Option<String>,
    /// The last known set, `IP:port`, sorted.
    pub addresses: Vec<String>,
    /// Why the last resolution failed; null when it succeeded (or none ran yet).
    pub last_error: Option<String>,
}

/// Every discover source of the running config, and the channel their tasks report on.
#[derive(Debug)]
pub struct Discovery {
    /// In config order: pools by name, sources in file order.
    sources: Mutex<Vec<Source>>,
    tx: mpsc::UnboundedSender<Resolution>,
    next_id: AtomicU64,
}

impl Discovery {
    /// No source yet, and the receiving end of the sources' reports.
    pub fn new() -> (Discovery, mpsc::UnboundedReceiver<Resolution>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let discovery = Discovery {
            sources: Mutex::new(Vec::new()),
            tx,
            next_id: AtomicU64::new(1),
        };
        (discovery, rx)
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Vec<Source>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the sources `config` has: an unchanged source keeps its task and set; one whose
    /// query, resolver or interval changed restarts (keeping its set when it asks the same
    /// thing of the same server); a new one starts with no address; one no longer configured
    /// stops, and its backends leave with it. Tasks run on `tasks` under `token`.
    pub fn reconcile(&self, config: &Config, tasks: &TaskTracker, token: &CancellationToken) {
        let mut sources = self.sources();
        let mut old: Vec<Source> = std::mem::take(&mut *sources);
        for pool in &config.pools {
            for d in &pool.discover {
                let position = old
                    .iter()
                    .position(|s| s.pool == pool.name && s.config.name == d.name);
                let mut source = match position.map(|i| old.remove(i)) {
                    Some(s) if s.config.query == d.query && s.config.resolver == d.resolver => {
                        if s.config.interval == d.interval {
                            // Only the weight may differ: it applies when members are built.
                            sources.push(Source {
                                config: d.clone(),
                                ..s
                            });
                            continue;
                        }
                        s.token.cancel();
                        Source {
                            config: d.clone(),
                            ..s
                        }
                    }
                    stopped => {
                        if let Some(s) = stopped {
                            s.token.cancel();
                        }
                        Source {
                            id: 0,
                            pool: pool.name.clone(),
                            config: d.clone(),
                            token: CancellationToken::new(),
                            addresses: Vec::new(),
                            last_resolved: None,
                            last_attempt: None,
                            last_error: None,
                        }
                    }
                };
                source.id = self.next_id.fetch_add(1, Ordering::Relaxed);
                source.token = token.child_token();
                tasks.spawn(run_source(
                    source.id,
                    source.config.clone(),
                    self.tx.clone(),
                    source.token.clone(),
                ));
                tracing::info!(pool = %pool.name, source = %d.name, kind = d.query.kind(), target = %d.query.target(), "discover source started");
                sources.push(source);
            }
        }
        for s in old {
            s.token.cancel();
            tracing::info!(pool = %s.pool, source = %s.config.name, "discover source stopped");
        }
    }

    /// Records a resolution (a stale one, from a source since stopped, is ignored) and counts
    /// it in `metrics`. Returns whether the source's address set changed: then the members
    /// must be installed.
    pub fn record(&self, resolution: Resolution, metrics: &Metrics) -> bool {
        let mut sources = self.sources();
        let Some(s) = sources.iter_mut().find(|s| s.id == resolution.source) else {
            return false;
        };
        s.last_attempt = Some(resolution.at);
        metrics.discovery_resolve.observe(resolution.took);
        let outcome = resolution
            .answer
            .as_ref()
            .map_or_else(|f| f.outcome, |_| Outcome::Ok);
        metrics.resolution(&s.pool, &s.config.name, outcome.as_str());
        match resolution.answer {
            Ok(found) => {
                if s.last_error.take().is_some() {
                    tracing::info!(pool = %s.pool, source = %s.config.name, addresses = found.len(), "discover source resolves again");
                }
                s.last_resolved = Some(resolution.at);
                let changed = found != s.addresses;
                s.addresses = found;
                changed
            }
            Err(failure) => {
                // Logged when the error changes, not at every interval.
                if s.last_error.as_deref() != Some(failure.message.as_str()) {
                    tracing::warn!(
                        pool = %s.pool,
                        source = %s.config.name,
                        result = outcome.as_str(),
                        error = %failure.message,
                        kept = s.addresses.len(),
                        "discover source did not resolve; its last known addresses stay"
                    );
                }
                s.last_error = Some(failure.message);
                false
            }
        }
    }

    /// The discovered backends of every pool, for a snapshot of `config`.
    pub fn members(&self, config: &Config) -> Members {
        let sources = self.sources();
        let mut members = Members::new();
        for s in sources.iter() {
            let Some(pool) = config.pools.iter().find(|p| p.name == s.pool) else {
                continue;
            };
            let Some(d) = pool.discover.iter().find(|d| d.name == s.config.name) else {
                continue;
            };
            let source: Arc<str> = d.name.as_str().into();
            let list = members.entry(pool.name.clone()).or_default();
            list.extend(s.addresses.iter().map(|f| Member {
                source: source.clone(),
                name: member_name(&d.name, f.addr),
                addr: f.addr,
                weight: weight(d.weight, f.srv_weight),
            }));
        }
        members
    }

    /// The sources of `pool` as the admin API shows them, in file order.
    pub fn status(&self, pool: &str) -> Vec<SourceStatus> {
        self.sources()
            .iter()
            .filter(|s| s.pool == pool)
            .map(|s| SourceStatus {
                name: s.config.name.clone(),
                kind: s.config.query.kind(),
                target: s.config.query.target(),
                resolver: s
                    .config
                    .resolver
                    .map_or_else(|| "system".to_owned(), |a| a.to_string()),
                interval_ms: u64::try_from(s.config.interval.as_millis()).unwrap_or(u64::MAX),
                last_resolved: s.last_resolved.map(rfc3339),
                last_attempt: s.last_attempt.map(rfc3339),
                addresses: s.addresses.iter().map(|f| f.addr.to_string()).collect(),
                last_error: s.last_error.clone(),
            })
            .collect()
    }
}

/// A discovered backend's name: `<source>-<ip>-<port>`, with `.` and `:` of the IP written
/// `-` (`workers-10-0-0-7-8080`, `workers-fd00--7-8080`). Only letters, digits, `_`, `.` and
/// `-`, like every backend name: no escaping in an admin URL.
pub fn member_name(source: &str, addr: SocketAddr) -> String {
    let ip: String = addr
        .ip()
        .to_string()
        .chars()
        .map(|c| if c == '.' || c == ':' { '-' } else { c })
        .collect();
    format!("{source}-{ip}-{}", addr.port())
}

/// A discovered backend's weight: the source's `weight` if set, else the SRV record's weight
/// (0, "no preference among equals", counted as 1; capped like every weight), else 1.
fn weight(configured: Option<u32>, srv_weight: Option<u16>) -> u32 {
    configured
        .or(srv_weight.map(|w| u32::from(w).clamp(1, MAX_WEIGHT)))
        .unwrap_or(1)
}

/// How long one resolution may take: `interval`, within [1 s, 5 s].
fn resolve_time(interval: Duration) -> Duration {
    interval.clamp(MIN_RESOLVE_TIME, MAX_RESOLVE_TIME)
}

/// One source's task: resolve, report, wait out the rest of `interval`, until `token` is
/// cancelled or nobody listens.
async fn run_source(
    id: u64,
    config: DiscoverConfig,
    tx: mpsc::UnboundedSender<Resolution>,
    token: CancellationToken,
) {
    let deadline = resolve_time(config.interval);
    let mut resolver = None;
    loop {
        let started = tokio::time::Instant::now();
        if resolver.is_none() {
            // Built here, not at start, so that a system configuration that cannot be read
            // is reported like any failed resolution, and tried again next time.
            match resolve::resolver(config.resolver, deadline / 2) {
                Ok(r) => resolver = Some(r),
                Err(failure) => {
                    let sent = tx.send(Resolution {
                        source: id,
                        at: SystemTime::now(),
                        took: started.elapsed(),
                        answer: Err(failure),
                    });
                    if sent.is_err() || !pause(&token, config.interval, started).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let Some(r) = &resolver else { continue };
        let answer = tokio::select! {
            _ = token.cancelled() => return,
            answer = tokio::time::timeout(deadline, resolve::resolve(r, &config.query)) => {
                answer.unwrap_or_else(|_| Err(Failure {
                    outcome: Outcome::Timeout,
                    message: format!("{}: timeout after {deadline:?}", config.query.target()),
                }))
            }
        };
        let resolution = Resolution {
            source: id,
            at: SystemTime::now(),
            took: started.elapsed(),
            answer,
        };
        if tx.send(resolution).is_err() || !pause(&token, config.interval, started).await {
            return;
        }
    }
}

/// Sleeps until `interval` after `started` (at least a few milliseconds); false when `token` was
/// cancelled meanwhile.
async fn pause(
    token: &CancellationToken,
    interval: Duration,
    started: tokio::time::Instant,
) -> bool {
    let wait = interval
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(10));
    tokio::select! {
        _ = token.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(addr: &str) -> Found {
        Found {
            addr: addr.parse().unwrap(),
            srv_weight: None,
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(text, None).expect("valid test config")
    }

    const TWO_SOURCES: &str = "[[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.1:80\"\n\
        [[pools.push.discover]]\nname = \"a\"\ndns = \"a.test:80\"\nresolver = \"127.0.0.1:1\"\n\
        [[pools.push.discover]]\nname = \"b\"\nsrv = \"_x._tcp.b.test\"\nresolver = \"127.0.0.1:1\"\n";

    #[test]
    fn discovered_names_are_deterministic_and_url_safe() {
        assert_eq!(
            member_name("workers", "10.0.0.7:8080".parse().unwrap()),
            "workers-10-0-0-7-8080"
        );
        assert_eq!(
            member_name("pods.svc", "[fd00::7]:8080".parse().unwrap()),
            "pods.svc-fd00--7-8080"
        );
        let name = member_name("a_b", "[::ffff:1.2.3.4]:1".parse().unwrap());
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')));
    }

    #[test]
    fn weights_come_from_the_source_then_the_srv_record_then_1() {
        assert_eq!(weight(Some(5), Some(40)), 5);
        assert_eq!(weight(None, Some(40)), 40);
        assert_eq!(weight(None, Some(0)), 1);
        assert_eq!(weight(None, Some(65535)), 1000);
        assert_eq!(weight(None, None), 1);
    }

    #[test]
    fn a_resolution_takes_at_most_the_interval_within_bounds() {
        assert_eq!(resolve_time(Duration::from_millis(100)), MIN_RESOLVE_TIME);
        assert_eq!(resolve_time(Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(resolve_time(Duration::from_secs(60)), MAX_RESOLVE_TIME);
    }

    #[tokio::test]
    async fn failures_keep_the_last_set_and_only_changes_ask_for_an_install() {
        let (discovery, _rx) = Discovery::new();
        let (tasks, token) = (TaskTracker::new(), CancellationToken::new());
        let cfg = config(TWO_SOURCES);
        discovery.reconcile(&cfg, &tasks, &token);
        let metrics = Metrics::default();
        let a = discovery.sources()[0].id;
        let ok = |addrs: &[&str]| Resolution {
            source: a,
            at: SystemTime::now(),
            took: Duration::ZERO,
            answer: Ok(addrs.iter().map(|s| found(s)).collect()),
        };
        let fail = |outcome| Resolution {
            source: a,
            at: SystemTime::now(),
            took: Duration::ZERO,
            answer: Err(Failure {
                outcome,
                message: "x".into(),
            }),
        };
        assert!(discovery.record(ok(&["10.0.0.2:80", "10.0.0.3:80"]), &metrics));
        assert!(!discovery.record(ok(&["10.0.0.2:80", "10.0.0.3:80"]), &metrics));
        for outcome in [
            Outcome::Timeout,
            Outcome::ServFail,
            Outcome::Empty,
            Outcome::NxDomain,
        ] {
            assert!(!discovery.record(fail(outcome), &metrics));
        }
        let status = &discovery.status("push")[0];
        assert_eq!(status.addresses, ["10.0.0.2:80", "10.0.0.3:80"]);
        assert_eq!(status.last_error.as_deref(), Some("x"));
        assert!(discovery.record(ok(&["10.0.0.3:80"]), &metrics));
        assert_eq!(discovery.status("push")[0].last_error, None);
        // A report from a source instance that no longer runs changes nothing.
        let stale = Resolution {
            source: 999,
            at: SystemTime::now(),
            took: Duration::ZERO,
            answer: Ok(vec![found("10.0.0.9:80")]),
        };
        assert!(!discovery.record(stale, &metrics));
        let counts = metrics.resolutions();
        assert!(counts.contains(&(("push".into(), "a".into(), "ok"), 3)));
        assert!(counts.contains(&(("push".into(), "a".into(), "servfail"), 1)));
        token.cancel();
    }

    #[tokio::test]
    async fn members_follow_config_order_and_weights() {
        let (discovery, _rx) = Discovery::new();
        let (tasks, token) = (TaskTracker::new(), CancellationToken::new());
        let cfg = config(TWO_SOURCES);
        discovery.reconcile(&cfg, &tasks, &token);
        let metrics = Metrics::default();
        let ids: Vec<u64> = discovery.sources().iter().map(|s| s.id).collect();
        discovery.record(
            Resolution {
                source: ids[1],
                at: SystemTime::now(),
                took: Duration::ZERO,
                answer: Ok(vec![Found {
                    addr: "10.0.1.1:9000".parse().unwrap(),
                    srv_weight: Some(30),
                }]),
            },
            &metrics,
        );
        discovery.record(
            Resolution {
                source: ids[0],
                at: SystemTime::now(),
                took: Duration::ZERO,
                answer: Ok(vec![found("10.0.0.2:80")]),
            },
            &metrics,
        );
        let members = discovery.members(&cfg);
        let push: Vec<(&str, u32)> = members["push"]
            .iter()
            .map(|m| (m.name.as_str(), m.weight))
            .collect();
        assert_eq!(push, [("a-10-0-0-2-80", 1), ("b-10-0-1-1-9000", 30)]);
        token.cancel();
    }

    #[tokio::test]
    async fn reconcile_keeps_unchanged_sources_and_drops_removed_ones() {
        let (discovery, _rx) = Discovery::new();
        let (tasks, token) = (TaskTracker::new(), CancellationToken::new());
        discovery.reconcile(&config(TWO_SOURCES), &tasks, &token);
        let metrics = Metrics::default();
        let before: Vec<u64> = discovery.sources().iter().map(|s| s.id).collect();
        discovery.record(
            Resolution {
                source: before[0],
                at: SystemTime::now(),
                took: Duration::ZERO,
                answer: Ok(vec![found("10.0.0.2:80")]),
            },
            &metrics,
        );
        // Same sources, a weight changed: same tasks, same set.
        let reweighted = TWO_SOURCES.replace("name = \"a\"", "name = \"a\"\nweight = 3");
        discovery.reconcile(&config(&reweighted), &tasks, &token);
        let after: Vec<u64> = discovery.sources().iter().map(|s| s.id).collect();
        assert_eq!(before, after);
        assert_eq!(discovery.members(&config(&reweighted))["push"][0].weight, 3);
        // The interval changed: a new task, the set kept.
        let slower = reweighted.replace("name = \"a\"", "name = \"a\"\ninterval = \"9s\"");
        discovery.reconcile(&config(&slower), &tasks, &token);
        assert_ne!(discovery.sources()[0].id, before[0]);
        assert_eq!(discovery.status("push")[0].addresses, ["10.0.0.2:80"]);
        // Another name asked: the set goes.
        let other = slower.replace("a.test:80", "c.test:80");
        discovery.reconcile(&config(&other), &tasks, &token);
        assert!(discovery.status("push")[0].addresses.is_empty());
        // Source b removed: it stops.
        let one = other
            .split("[[pools.push.discover]]\nname = \"b\"")
            .next()
            .unwrap()
            .to_owned();
        discovery.reconcile(&config(&one), &tasks, &token);
        assert_eq!(discovery.status("push").len(), 1);
        assert!(discovery.members(&config(&one))["push"].is_empty());
        token.cancel();
    }
}
