//! `syncgate demo`: the outage syncgate exists to prevent, replayed on this machine.
//!
//! Three simulated workers hold the full key set; a fourth joins late with an empty key
//! database and syncs over a few seconds, the way the new machine did in the real outage.
//! syncgate sits in front of them while client agents send a steady load of valid keys.
//! The backends' state changes are printed as they happen, and the run ends with the count of
//! requests and of 401s that reached clients: the answer must be 0.
//!
//! [`SimWorker`], the simulated worker it runs, is a real HTTP server that the integration
//! tests and the benchmarks use as well; nothing in the proxy depends on this module.

mod sim;

pub use sim::{SimOptions, SimWorker};

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;

/// Demo parameters.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the load runs.
    pub duration: Duration,
    /// Concurrent client agents.
    pub clients: usize,
    /// When the late worker starts, from the beginning of the load.
    pub late_join_after: Duration,
    /// How long the late worker takes to sync its key database.
    pub late_sync_takes: Duration,
    /// Print progress to stdout.
    pub verbose: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(20),
            clients: 16,
            late_join_after: Duration::from_secs(3),
            late_sync_takes: Duration::from_secs(6),
            verbose: true,
        }
    }
}

/// What the demo's clients saw.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Requests sent.
    pub requests: u64,
    /// Answers by status (0: no answer at all).
    pub by_status: BTreeMap<u16, u64>,
    /// Requests each worker answered, by backend name.
    pub by_worker: BTreeMap<String, u64>,
    /// Whether the late worker was admitted before the end.
    pub late_worker_admitted: bool,
}

impl DemoReport {
    /// 401s that reached clients.
    pub fn unauthorized(&self) -> u64 {
        self.by_status.get(&401).copied().unwrap_or(0)
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
    Config(#[from] crate::config::LoadError),
    /// syncgate did not start.
    #[error(transparent)]
    Start(#[from] crate::StartError),
}

const TOTAL_KEYS: u64 = 5_000;

fn say(verbose: bool, started: Instant, msg: &str) {
    if verbose {
        println!("[{:>5.1}s] {msg}", started.elapsed().as_secs_f64());
        let _ = std::io::stdout().flush();
    }
}

/// Runs the demo scenario and returns what the clients saw.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let synced = SimOptions {
        total_keys: TOTAL_KEYS,
        generation: 1842,
        synced: true,
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(SimWorker::start(synced.clone()).await?);
    }
    // Reserve the late worker's port now (it is in the config from the start, as the new
    // machine was), but start it only later: until then its probes find nothing listening.
    let late_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let mut toml = String::from(
        r#"
[server]
listen = ["127.0.0.1:0"]
worker_threads = 2

[admin]
listen = "127.0.0.1:0"

[pools.push]
balance = "p2c"
slow_start = "2s"

[pools.push.probe]
interval = "250ms"
timeout = "200ms"
rise = 2
fall = 2
"#,
    );
    for (i, w) in workers.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[pools.push.backends]]\nname = \"worker-{}\"\naddr = \"{}\"\n",
            i + 1,
            w.addr()
        ));
    }
    toml.push_str(&format!(
        "\n[[pools.push.backends]]\nname = \"worker-new\"\naddr = \"{late_addr}\"\n"
    ));
    let config = Config::parse(&toml, None)?;
    let running = crate::start(config).await?;
    let proxy = running.proxy_addrs()[0];
    say(
        opts.verbose,
        started,
        &format!("syncgate listening on {proxy}; 3 synced workers, worker-new not started yet"),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let report = Arc::new(Mutex::new(DemoReport::default()));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut clients = Vec::new();
    for _ in 0..opts.clients {
        let client = client.clone();
        let stop = stop.clone();
        let report = report.clone();
        let workers_by_addr: Vec<(String, String)> = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.addr().to_string(), format!("worker-{}", i + 1)))
            .chain(std::iter::once((
                late_addr.to_string(),
                "worker-new".to_string(),
            )))
            .collect();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let key = fastrand::u64(0..TOTAL_KEYS);
                let req = http::Request::post(format!("http://{proxy}/v1/batch"))
                    .header("authorization", format!("Bearer key-{key}"))
                    .body(Empty::new())
                    .expect("valid request");
                let (status, worker) = match client.request(req).await {
                    Ok(resp) => {
                        let worker = resp
                            .headers()
                            .get("x-worker")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let status = resp.status().as_u16();
                        let _ = resp.into_body().collect().await;
                        (status, worker)
                    }
                    Err(_) => (0, None),
                };
                {
                    let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                    r.requests += 1;
                    *r.by_status.entry(status).or_default() += 1;
                    if let Some(w) = worker {
                        let name = workers_by_addr
                            .iter()
                            .find(|(a, _)| *a == w)
                            .map_or(w.clone(), |(_, n)| n.clone());
                        *r.by_worker.entry(name).or_default() += 1;
                    }
                }
                if status == 503 {
                    // Agents retry 503 after Retry-After; a short pause keeps the demo honest.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }

    let mut late: Option<SimWorker> = None;
    let mut seen_events = 0;
    let deadline = started + opts.duration;
    while Instant::now() < deadline {
        if late.is_none() && started.elapsed() >= opts.late_join_after {
            let w = SimWorker::start_on(
                late_addr,
                SimOptions {
                    synced: false,
                    ..synced.clone()
                },
            )
            .await?;
            w.begin_sync(opts.late_sync_takes);
            say(opts.verbose, started, &format!(
                "worker-new started with an empty key database; it answers 401 to every key it does not hold yet (sync takes {:?})",
                opts.late_sync_takes
            ));
            late = Some(w);
        }
        for e in running.shared().events.since(seen_events) {
            seen_events = e.seq;
            say(
                opts.verbose,
                started,
                &format!("{} {} → {} ({})", e.backend, e.from, e.to, e.reason),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let late_worker_admitted = running
        .shared()
        .snapshot()
        .backends()
        .any(|b| &*b.name == "worker-new" && b.is_routable());
    let direct_401s = late
        .as_ref()
        .map(|w| {
            w.status_counts()
                .into_iter()
                .filter(|(s, _)| *s == 401)
                .map(|(_, n)| n)
                .sum::<u64>()
        })
        .unwrap_or(0);
    running.shutdown().await;
    for w in workers {
        w.stop().await;
    }
    if let Some(w) = late {
        w.stop().await;
    }
    let mut report = report.lock().unwrap_or_else(|e| e.into_inner()).clone();
    report.late_worker_admitted = late_worker_admitted;
    if opts.verbose {
        println!();
        println!("requests sent:        {}", report.requests);
        for (status, n) in &report.by_status {
            let label = if *status == 0 {
                "no answer".to_string()
            } else {
                status.to_string()
            };
            println!("  {label:<18}  {n}");
        }
        println!("answered by worker:");
        for (w, n) in &report.by_worker {
            println!("  {w:<18}  {n}");
        }
        println!("401s worker-new would have given without syncgate's gate: it received {direct_401s} requests answered 401 (should be 0)");
        println!("401s that reached clients: {}", report.unauthorized());
    }
    Ok(report)
}
