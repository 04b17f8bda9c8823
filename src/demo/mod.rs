//! `syncgate demo`: the outage syncgate exists to prevent, replayed twice on this machine, side
//! by side.
//!
//! Two identical fleets run at the same time, each behind its own syncgate: three simulated
//! workers that hold the full key set, and `worker-new`, which is in the config from the start
//! but joins late with an empty key database and syncs over a few seconds, the way the new
//! machine did in the real outage. Later `worker-2` loses its keys while its readiness probe
//! keeps claiming a complete sync (a bug no probe can see), and re-syncs a moment later.
//!
//! - **ordinary**: the pool is checked like an ordinary load balancer does it: `GET /healthz`,
//!   any 2xx admits (`contract = "status"`), and no second opinion (`statuses = []`).
//! - **syncgate**: the key-sync readiness contract on `/ready` and the second opinion on
//!   401/403, syncgate's defaults.
//!
//! The same client load (agents sending valid keys) starts on both once both pools are ready,
//! so no request meets a cold start. The runs print the backends' state changes and the
//! joining worker's key count as syncgate's probes see it, and end with one table: requests,
//! 401s that reached clients by worker, 503s and why. Every 401 in it is an agent that
//! switched itself off; `syncgate demo` exits 1 if the syncgate column has one.
//!
//! [`SimWorker`], the simulated worker it runs, is a real HTTP server that the integration
//! tests and the benchmarks use as well; nothing in the proxy depends on this module.

mod report;
mod sim;

pub use report::{DemoReport, RunReport};

pub use sim::{SimOptions, SimWorker};

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::{Backend, Config, GuardOutcome, Running, State};

/// Demo parameters. [`DemoOptions::for_duration`] scales the timeline to a run's length.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the load runs.
    pub duration: Duration,
    /// Concurrent client agents, per run.
    pub clients: usize,
    /// When `worker-new` starts, from the beginning of the load.
    pub late_join_after: Duration,
    /// How long `worker-new` takes to sync its key database.
    pub late_sync_takes: Duration,
    /// When `worker-2` loses its keys, from the beginning of the load.
    pub lose_keys_at: Duration,
    /// How long `worker-2`'s probe keeps claiming a complete sync after that.
    pub lie_lasts: Duration,
    /// How long `worker-2` then takes to sync its keys again.
    pub resync_takes: Duration,
    /// Print progress and the table to stdout.
    pub verbose: bool,
}

impl DemoOptions {
    /// The demo's timeline fitted to `duration`: `worker-new` joins at 15% and syncs over 30%;
    /// `worker-2` loses its keys at 60%, lies about it for 5%, and re-syncs over 15%.
    pub fn for_duration(duration: Duration) -> DemoOptions {
        DemoOptions {
            duration,
            clients: 8,
            late_join_after: duration.mul_f64(0.15),
            late_sync_takes: duration.mul_f64(0.30),
            lose_keys_at: duration.mul_f64(0.60),
            lie_lasts: duration.mul_f64(0.05),
            resync_takes: duration.mul_f64(0.15),
            verbose: true,
        }
    }
}

impl Default for DemoOptions {
    /// 20 s (see [`DemoOptions::for_duration`]).
    fn default() -> Self {
        DemoOptions::for_duration(Duration::from_secs(20))
    }
}

/// Errors running the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A simulated worker could not start.
    #[error("simulated worker: {0}")]
    Worker(#[from] std::io::Error),
    /// The generated config did not validate (a bug).
    #[error("demo config: {0}")]
    Config(#[from] crate::LoadError),
    /// syncgate did not start.
    #[error(transparent)]
    Start(#[from] crate::StartError),
    /// The synced workers were not admitted in time (a machine far too busy).
    #[error("the {0} pool did not become ready within {1:?}")]
    NotReady(&'static str, Duration),
}

/// Keys in the fleet's key set.
const TOTAL_KEYS: u64 = 5_000;
/// The fleet's key-set generation.
const GENERATION: u64 = 1842;
/// The synced workers: `worker-1` .. `worker-3`.
const SYNCED: usize = 3;
/// The worker that loses its keys mid-run.
const FORGETFUL: &str = "worker-2";
/// The worker that joins late.
const LATE: &str = "worker-new";
/// How long the synced workers may take to be admitted before the load starts.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Which way a run checks its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// `GET /healthz`, any 2xx admits; no second opinion.
    Ordinary,
    /// syncgate's key-sync contract and second opinion.
    Gated,
}

impl Check {
    fn label(self) -> &'static str {
        match self {
            Check::Ordinary => "ordinary",
            Check::Gated => "syncgate",
        }
    }

    /// The pool's probe and guard settings.
    fn pool_settings(self) -> &'static str {
        match self {
            Check::Ordinary => {
                "[pools.push.probe]\npath = \"/healthz\"\ncontract = \"status\"\n\
                 interval = \"250ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n\n\
                 [pools.push.guard]\nstatuses = []\n"
            }
            Check::Gated => {
                "[pools.push.probe]\ninterval = \"250ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n"
            }
        }
    }
}

/// One run: a syncgate over its own fleet, and what its clients saw.
struct Run {
    check: Check,
    running: Running,
    /// `worker-1` .. `worker-3`.
    workers: Vec<SimWorker>,
    /// Where `worker-new` listens once it starts (in the config from the start).
    late_addr: SocketAddr,
    /// `late_addr`'s port, held (bound, not listening: connections are refused) until
    /// `worker-new` starts on it. A port only looked up and let go could be taken meanwhile
    /// by another program's listener, whose answers the probes would then read.
    late_socket: Option<tokio::net::TcpSocket>,
    late: Option<SimWorker>,
    tally: Arc<Mutex<RunReport>>,
    /// The last event printed.
    seen_events: u64,
}

impl Run {
    async fn start(check: Check) -> Result<Run, DemoError> {
        let synced = SimOptions {
            total_keys: TOTAL_KEYS,
            generation: GENERATION,
            synced: true,
        };
        let mut workers = Vec::new();
        for _ in 0..SYNCED {
            workers.push(SimWorker::start(synced.clone()).await?);
        }
        // Reserve worker-new's port now (it is in the config from the start, as the new
        // machine was), but start it only later: until then its probes find nothing listening.
        let late_socket = tokio::net::TcpSocket::new_v4()?;
        late_socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let late_addr = late_socket.local_addr()?;
        // The demo tells its story on stdout; an access log line per request on stderr
        // would bury it.
        let mut toml = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworker_threads = 1\n\n\
             [server.access_log]\nenabled = false\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [pools.push]\nbalance = \"p2c\"\nslow_start = \"1s\"\n\n{}",
            check.pool_settings()
        );
        for (i, w) in workers.iter().enumerate() {
            let _ = write!(
                toml,
                "\n[[pools.push.backends]]\nname = \"worker-{}\"\naddr = \"{}\"\n",
                i + 1,
                w.addr()
            );
        }
        let _ = write!(
            toml,
            "\n[[pools.push.backends]]\nname = \"{LATE}\"\naddr = \"{late_addr}\"\n"
        );
        let running = crate::start(Config::parse(&toml, None)?).await?;
        Ok(Run {
            check,
            running,
            workers,
            late_addr,
            late_socket: Some(late_socket),
            late: None,
            tally: Arc::default(),
            seen_events: 0,
        })
    }

    fn backend(&self, name: &str) -> Option<Arc<Backend>> {
        self.running
            .shared()
            .snapshot()
            .backends()
            .find(|b| &*b.name == name)
            .cloned()
    }

    fn state(&self, name: &str) -> String {
        self.backend(name)
            .map_or_else(|| "absent".to_owned(), |b| b.state().to_string())
    }

    /// Whether the synced workers are all ready.
    fn synced_ready(&self) -> bool {
        (1..=SYNCED).all(|i| {
            self.backend(&format!("worker-{i}"))
                .is_some_and(|b| b.is_routable())
        })
    }

    /// Worker names by the address their answers carry in `x-worker`.
    fn names(&self) -> Vec<(String, String)> {
        self.workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.addr().to_string(), format!("worker-{}", i + 1)))
            .chain(std::iter::once((
                self.late_addr.to_string(),
                LATE.to_owned(),
            )))
            .collect()
    }

    fn forgetful(&self) -> Option<&SimWorker> {
        self.workers.get(1)
    }

    /// Prints (and records) the state changes since the last call.
    fn follow_events(&mut self, opts: &DemoOptions, started: Instant) {
        for e in self.running.shared().events.since(self.seen_events) {
            self.seen_events = e.seq;
            let at = started.elapsed();
            {
                let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
                if e.backend == LATE && e.to == State::Ready.as_str() {
                    t.late_worker_admitted_at.get_or_insert(at);
                }
                if e.backend == FORGETFUL && e.to == State::Ejected.as_str() {
                    t.worker_2_ejections += 1;
                }
            }
            let who = if e.backend.is_empty() {
                format!("pool {}", e.pool)
            } else {
                e.backend.clone()
            };
            say(
                opts,
                started,
                &format!(
                    "{:<8}  {who} {} → {} ({})",
                    self.check.label(),
                    e.from,
                    e.to,
                    e.reason
                ),
            );
        }
    }

    /// Starts `clients` agents sending valid keys until `stop`.
    fn load(&self, clients: usize, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let proxy = self.running.proxy_addrs()[0];
        let names = Arc::new(self.names());
        (0..clients)
            .map(|_| {
                let (client, stop, tally, names) = (
                    client.clone(),
                    stop.clone(),
                    self.tally.clone(),
                    names.clone(),
                );
                tokio::spawn(agent(client, proxy, names, tally, stop))
            })
            .collect()
    }
}

/// One client agent: valid keys, one request at a time; a 503 is retried after a pause, as
/// agents honour `Retry-After` (shortened for the demo).
async fn agent(
    client: Client<HttpConnector, Empty<Bytes>>,
    proxy: SocketAddr,
    names: Arc<Vec<(String, String)>>,
    tally: Arc<Mutex<RunReport>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let key = fastrand::u64(0..TOTAL_KEYS);
        let Ok(req) = http::Request::post(format!("http://{proxy}/v1/batch"))
            .header("authorization", format!("Bearer key-{key}"))
            .body(Empty::new())
        else {
            return;
        };
        let (status, worker, error) = match client.request(req).await {
            Ok(resp) => {
                let worker = resp
                    .headers()
                    .get("x-worker")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let error = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned));
                (status, worker, error)
            }
            Err(_) => (0, None, None),
        };
        let worker = worker.map(|w| {
            names
                .iter()
                .find(|(addr, _)| *addr == w)
                .map_or(w, |(_, name)| name.clone())
        });
        {
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.requests += 1;
            *t.by_status.entry(status).or_default() += 1;
            if let Some(w) = &worker {
                *t.by_worker.entry(w.clone()).or_default() += 1;
            }
            match status {
                401 => {
                    let w = worker.clone().unwrap_or_else(|| "syncgate".to_owned());
                    *t.unauthorized_by_worker.entry(w).or_default() += 1;
                }
                503 => {
                    let why = match (&worker, error) {
                        (Some(w), _) => format!("{w} answered 503"),
                        (None, Some(e)) => e,
                        (None, None) => "no reason given".to_owned(),
                    };
                    *t.unavailable.entry(why).or_default() += 1;
                }
                _ => {}
            }
        }
        if status == 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn say(opts: &DemoOptions, started: Instant, msg: &str) {
    if opts.verbose {
        println!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    }
}

fn intro(opts: &DemoOptions) {
    if !opts.verbose {
        return;
    }
    println!(
        "syncgate demo: a worker joins before it has synced its account keys; agents read a 401 \
         as \"account cancelled\" and switch themselves off.\n\
         The same join runs twice, side by side, each fleet behind its own syncgate:\n  \
         ordinary  health check GET /healthz, any 2xx admits (contract = \"status\"), no second \
         opinion (statuses = [])\n  \
         syncgate  key-sync readiness contract on GET /ready, second opinion on 401/403\n\
         Each: worker-1..3 hold all {TOTAL_KEYS} keys (generation {GENERATION}); worker-new joins \
         after {:.1} s with none and syncs over {:.1} s; worker-2 loses its keys at {:.1} s while \
         its probe still claims a complete sync, and re-syncs {:.1} s later. {} agents per run \
         send valid keys for {:.0} s, from the moment both pools are ready.\n",
        opts.late_join_after.as_secs_f64(),
        opts.late_sync_takes.as_secs_f64(),
        opts.lose_keys_at.as_secs_f64(),
        opts.lie_lasts.as_secs_f64(),
        opts.clients,
        opts.duration.as_secs_f64(),
    );
}

/// Runs the demo and returns what both runs' clients saw.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, DemoError> {
    intro(&opts);
    let mut runs = [
        Run::start(Check::Ordinary).await?,
        Run::start(Check::Gated).await?,
    ];
    // The load starts once both pools are ready, so no request meets a cold start (a pool with
    // no ready backend answers 503, in both runs alike).
    let waited = Instant::now();
    for run in &runs {
        while !run.synced_ready() {
            if waited.elapsed() > READY_WITHIN {
                return Err(DemoError::NotReady(run.check.label(), READY_WITHIN));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let started = Instant::now();
    for run in &mut runs {
        run.follow_events(
            &DemoOptions {
                verbose: false,
                ..opts.clone()
            },
            started,
        );
    }
    say(
        &opts,
        started,
        &format!(
            "both pools ready (worker-1..3, after {:.1} s of probes); worker-new not started; load starts",
            waited.elapsed().as_secs_f64()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let agents: Vec<_> = runs
        .iter()
        .flat_map(|r| r.load(opts.clients, &stop))
        .collect();

    let (mut joined, mut lost, mut resyncing) = (false, false, false);
    let mut last_keys_line: Option<Instant> = None;
    while started.elapsed() < opts.duration {
        let now = started.elapsed();
        if !joined && now >= opts.late_join_after {
            joined = true;
            for run in &mut runs {
                // Taken once: `joined` starts worker-new once.
                let Some(socket) = run.late_socket.take() else {
                    continue;
                };
                let w = SimWorker::start_with(
                    socket,
                    SimOptions {
                        total_keys: TOTAL_KEYS,
                        generation: GENERATION,
                        synced: false,
                    },
                )
                .await?;
                w.begin_sync(opts.late_sync_takes);
                run.late = Some(w);
            }
            say(
                &opts,
                started,
                &format!(
                    "worker-new starts with an empty key database; it answers 401 to every key it \
                     has not synced yet (the sync takes {:.1} s)",
                    opts.late_sync_takes.as_secs_f64()
                ),
            );
        }
        if !lost && now >= opts.lose_keys_at {
            lost = true;
            for run in &runs {
                if let Some(w) = run.forgetful() {
                    w.forget_keys();
                }
            }
            say(
                &opts,
                started,
                "worker-2 loses its keys; its probe still reports a complete sync (a bug no probe \
                 can see): only a second opinion on its 401s can tell",
            );
        }
        if lost && !resyncing && now >= opts.lose_keys_at + opts.lie_lasts {
            resyncing = true;
            for run in &runs {
                if let Some(w) = run.forgetful() {
                    w.begin_sync(opts.resync_takes);
                }
            }
            say(
                &opts,
                started,
                &format!(
                    "worker-2 notices and re-syncs its keys over {:.1} s; its probe reports the \
                     truth again",
                    opts.resync_takes.as_secs_f64()
                ),
            );
        }
        for run in &mut runs {
            run.follow_events(&opts, started);
        }
        // While worker-new syncs, its key count as syncgate's probes see it (the ordinary
        // check asks /healthz, which says nothing about keys).
        let [ordinary, gated] = &runs;
        if let Some(b) = gated.backend(LATE) {
            let syncing = b.key_sync().is_some_and(|k| !k.complete);
            let due = last_keys_line.is_none_or(|t| t.elapsed() >= Duration::from_millis(900));
            if joined && syncing && due {
                last_keys_line = Some(Instant::now());
                let keys = b.key_sync().map_or(0, |k| k.keys);
                say(
                    &opts,
                    started,
                    &format!(
                        "worker-new key sync, as syncgate's probes see it: {keys} of {TOTAL_KEYS} \
                         keys · ordinary: {} · syncgate: {}",
                        ordinary.state(LATE),
                        gated.state(LATE)
                    ),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in agents {
        let _ = a.await;
    }
    for run in &mut runs {
        run.follow_events(&opts, started);
    }
    let [ordinary, gated] = runs;
    let report = DemoReport {
        ordinary: ordinary.finish().await,
        gated: gated.finish().await,
    };
    if opts.verbose {
        println!();
        print!("{}", report.table());
        println!();
        print!("{}", report.explanation());
    }
    Ok(report)
}

impl Run {
    /// Stops syncgate and the workers; returns the tally with syncgate's own counts.
    async fn finish(self) -> RunReport {
        let contradicted = self
            .running
            .shared()
            .pool_stats()
            .into_iter()
            .find(|(name, _)| name == "push")
            .map_or(0, |(_, stats)| {
                let idx = GuardOutcome::ALL
                    .iter()
                    .position(|o| *o == GuardOutcome::Contradicted);
                idx.and_then(|i| stats.guard_outcomes.get(i))
                    .map_or(0, |n| n.load(Ordering::Relaxed))
            });
        self.running.shutdown().await;
        for w in self.workers {
            w.stop().await;
        }
        if let Some(w) = self.late {
            w.stop().await;
        }
        let mut report = self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
        report.contradicted = contradicted;
        report
    }
}
