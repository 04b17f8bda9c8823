//! Discovery benchmark (release build): a source answering 1,000 addresses, and the request
//! path while sources re-resolve every second.
//!
//! `cargo bench --bench discover` (set `E2E_SECS` to change the 4 s per load run). The test DNS
//! server of `tests/support/dns.rs` runs on a thread of its own; the answer of 1,000 A records
//! is larger than a UDP datagram, so every resolution is a UDP query, a truncated answer, and
//! the same query over TCP, as with a real server.
//!
//! 1. Resolve, diff, build and swap: the durations syncgate measures itself
//!    (`syncgate_discovery_resolve_duration_seconds`, `..._install_duration_seconds`), read
//!    per event from the histograms' sums, while one address of the 1,000 changes at a time.
//! 2. Requests per second through syncgate (one ready worker beside the 1,000 discovered,
//!    pending, addresses) with the source re-resolving every hour, every second, and every
//!    second with one address changing each time; syncgate on threads of its own (control
//!    runtime and one proxy thread), the load generator on the main thread. Compare the
//!    ratios: the machine is shared, absolute figures move from run to run.

#[path = "../tests/support/dns.rs"]
#[allow(dead_code)]
mod dns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dns::{Answer, TestDns};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::{Config, State};
use tokio::net::TcpStream;

const ADDRESSES: u16 = 1000;
const CONNECTIONS: usize = 32;

/// The answer after `flips` changes: addresses `flips .. flips + 1000`, each on its own
/// `127.2.x.y`.
fn answer(flips: u16) -> Answer {
    Answer::Addrs(
        (flips..flips + ADDRESSES)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250) as u8 + 1)))
            .collect(),
    )
}

/// The test DNS server on a thread of its own.
fn dns_thread() -> Arc<TestDns> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(Arc::new(TestDns::start().await)).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// A simulated worker on a thread of its own.
fn worker_thread() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let w = SimWorker::start(SimOptions::default()).await.unwrap();
            tx.send(w.addr()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

fn config(dns: &TestDns, interval: &str, worker: Option<SocketAddr>) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworker_threads = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [pools.push]\nslow_start = \"0s\"\n[pools.push.guard]\nstatuses = []\n\
         [pools.push.probe]\ninterval = \"10s\"\ntimeout = \"1s\"\nrise = 1\n\
         [[pools.push.discover]]\nname = \"pods\"\ndns = \"many.test:7000\"\ninterval = \"{interval}\"\nresolver = \"{}\"\n",
        dns.addr()
    );
    if let Some(w) = worker {
        s.push_str(&format!(
            "[[pools.push.backends]]\nname = \"w0\"\naddr = \"{w}\"\n"
        ));
    }
    s
}

async fn start(text: &str, ready: bool) -> syncgate::Running {
    let running = syncgate::start(Config::parse(text, None).unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = running.shared().snapshot();
        let discovered = snapshot.backends().filter(|b| b.source.is_some()).count();
        let static_ready = !ready
            || snapshot
                .backends()
                .any(|b| b.source.is_none() && b.state() == State::Ready);
        if discovered == usize::from(ADDRESSES) && static_ready {
            return running;
        }
        assert!(Instant::now() < deadline, "backends not there in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `(sum seconds, count)` of a histogram snapshot.
fn totals(h: (f64, u64, Vec<(f64, u64)>)) -> (f64, u64) {
    (h.0, h.1)
}

fn ms(secs: f64) -> String {
    format!("{:.2} ms", secs * 1000.0)
}

struct Load {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// One keep-alive HTTP/1.1 connection per client task.
async fn load(target: SocketAddr, secs: f64) -> Load {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let stream = TcpStream::connect(target).await.expect("connect");
            stream.set_nodelay(true).ok();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let req = http::Request::post("/v1/batch")
                    .header("host", "push.example.com")
                    .header(
                        "authorization",
                        format!("Bearer key-{}", fastrand::u64(0..1000)),
                    )
                    .body(Full::new(Bytes::from_static(b"batch")))
                    .unwrap();
                let t = Instant::now();
                match send.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status() == 200;
                        let _ = resp.into_body().collect().await;
                        if ok {
                            lat.push(t.elapsed().as_micros() as u64);
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Load {
        rps: all.len() as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

fn print(label: &str, r: &Load) {
    println!(
        "{label:<52} {:>9.0} req/s   p50 {:>5} µs   p99 {:>6} µs   errors {}",
        r.rps, r.p50_us, r.p99_us, r.errors
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs: f64 = std::env::var("E2E_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let dns = dns_thread();
    dns.set("many.test", answer(0));

    // 1. Resolve → diff → build → swap, 1,000 addresses.
    let running = start(&config(&dns, "200ms", None), false).await;
    let metrics = &running.shared().metrics;
    let (first_install, _) = totals(metrics.discovery_install.snapshot());
    let (resolve_sum0, resolve_count0) = totals(metrics.discovery_resolve.snapshot());
    let tcp0 = dns.tcp_queries();
    let mut installs = Vec::new();
    for flip in 1..=20u16 {
        let (sum0, count0) = totals(metrics.discovery_install.snapshot());
        dns.set("many.test", answer(flip));
        let deadline = Instant::now() + Duration::from_secs(10);
        while totals(metrics.discovery_install.snapshot()).1 == count0 {
            assert!(Instant::now() < deadline, "no install after a change");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (sum1, count1) = totals(metrics.discovery_install.snapshot());
        assert_eq!(count1, count0 + 1);
        installs.push(sum1 - sum0);
    }
    let (resolve_sum1, resolve_count1) = totals(metrics.discovery_resolve.snapshot());
    installs.sort_by(f64::total_cmp);
    let resolutions = resolve_count1 - resolve_count0;
    println!(
        "discover, {ADDRESSES} addresses (UDP truncated, then TCP: {} TCP queries):",
        dns.tcp_queries() - tcp0
    );
    println!(
        "  resolve: mean {} over {resolutions} resolutions",
        ms((resolve_sum1 - resolve_sum0) / resolutions.max(1) as f64)
    );
    println!(
        "  diff + build + swap + probers, one address in and one out: median {} (max {}) over {} changes",
        ms(installs[installs.len() / 2]),
        ms(installs[installs.len() - 1]),
        installs.len()
    );
    println!(
        "  first install, 0 → {ADDRESSES} backends: {}",
        ms(first_install)
    );
    running.shutdown().await;

    // 2. The request path while a source re-resolves. syncgate runs on a thread of its own
    // (its control runtime, as in `syncgate run`), the load on this one; the three settings
    // take turns, three rounds, and the median of each is printed.
    let worker = worker_thread();
    println!(
        "load: {CONNECTIONS} keep-alive connections, one ready worker, {ADDRESSES} discovered (pending) addresses, {secs} s per run, medians of 3 rounds"
    );
    let settings = [
        ("source re-resolving every hour", "1h", false),
        ("every second, same answer", "1s", false),
        ("every second, one address changing", "1s", true),
    ];
    let mut results: Vec<Vec<Load>> = settings.iter().map(|_| Vec::new()).collect();
    let mut swaps = 0;
    for round in 0..3 {
        for k in 0..settings.len() {
            let i = (k + round) % settings.len();
            let (_, interval, changing) = settings[i];
            dns.set("many.test", answer(0));
            let instance = Instance::start(config(&dns, interval, Some(worker)));
            let stop = Arc::new(AtomicBool::new(false));
            let flipper = changing.then(|| {
                let (dns, stop) = (dns.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut flip = 0;
                    while !stop.load(Ordering::Relaxed) {
                        flip += 1;
                        dns.set("many.test", answer(flip));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                })
            });
            let installs0 = instance.shared.metrics.discovery_install.snapshot().1;
            results[i].push(load(instance.proxy, secs).await);
            stop.store(true, Ordering::Relaxed);
            if let Some(f) = flipper {
                f.await.unwrap();
                swaps += instance.shared.metrics.discovery_install.snapshot().1 - installs0;
            }
            instance.stop();
        }
    }
    let medians: Vec<&Load> = results
        .iter_mut()
        .map(|runs| {
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            &runs[runs.len() / 2]
        })
        .collect();
    for ((label, _, _), r) in settings.iter().zip(&medians) {
        print(label, r);
    }
    println!(
        "ratio to every hour: same answer {:.3}, changing {:.3} ({swaps} swaps while loaded)",
        medians[1].rps / medians[0].rps,
        medians[2].rps / medians[0].rps
    );
}

/// syncgate on a thread of its own, until [`Instance::stop`].
struct Instance {
    proxy: SocketAddr,
    shared: Arc<syncgate::Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Instance {
    /// Starts syncgate with `text` and waits for its backends.
    fn start(text: String) -> Instance {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let running = start(&text, true).await;
                tx.send((running.proxy_addrs()[0], running.shared().clone()))
                    .unwrap();
                let _ = stopped.await;
                running.shutdown().await;
            });
        });
        let (proxy, shared) = rx.recv().unwrap();
        Instance {
            proxy,
            shared,
            stop,
            thread,
        }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
    }
}
