//! End-to-end benchmark (release build): throughput and latency through syncgate against the
//! same simulated worker hit directly, the guard's cost on 401-free traffic, the credential
//! memories' cost on 2xx traffic, the cost of a reload with 1,000 backends, and throughput
//! under a reload every 100 ms.
//!
//! `cargo bench --bench e2e` (set `E2E_SECS` to change the 4 s per measurement). Everything
//! runs on this machine: the load generator, syncgate (one proxy thread) and the worker each
//! get a thread of their own, so compare the printed ratios, not absolute figures.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::Config;
use syncgate::State;
use tokio::net::TcpStream;

const CONNECTIONS: usize = 32;

struct Result {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// One keep-alive HTTP/1.1 connection per client task, as push agents hold them.
async fn load(target: SocketAddr, secs: f64, body: Bytes) -> Result {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let body = body.clone();
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
                    .body(Full::new(body.clone()))
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
    Result {
        rps: all.len() as f64 / secs,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

fn print(label: &str, r: &Result) {
    println!(
        "{label:<40} {:>9.0} req/s   p50 {:>5} µs   p99 {:>6} µs   errors {}",
        r.rps, r.p50_us, r.p99_us, r.errors
    );
}

/// Runs a simulated worker on a thread of its own; returns its address.
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

/// The config of a measurement: syncgate's defaults but for the access log, off (a line per
/// request on stderr would bury the figures; benches/access_log.sh measures its cost).
fn config(backends: &[SocketAddr], guard: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworker_threads = 1\n[server.access_log]\nenabled = false\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [pools.push]\nslow_start = \"0s\"\n[pools.push.probe]\ninterval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\n\
         [pools.push.guard]\n{guard}\n"
    );
    for (i, a) in backends.iter().enumerate() {
        s.push_str(&format!(
            "[[pools.push.backends]]\nname = \"w{i}\"\naddr = \"{a}\"\n"
        ));
    }
    s
}

async fn start(text: &str, path: Option<&Path>) -> syncgate::Running {
    let cfg = match path {
        Some(p) => {
            std::fs::write(p, text).unwrap();
            Config::load(p).unwrap()
        }
        None => Config::parse(text, None).unwrap(),
    };
    let running = syncgate::start(cfg).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !running
        .shared()
        .snapshot()
        .backends()
        .all(|b| b.state() == State::Ready)
    {
        assert!(Instant::now() < deadline, "backends not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let secs: f64 = std::env::var("E2E_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let body = Bytes::from(vec![b'x'; 256]);
    let w1 = worker_thread();
    let w2 = worker_thread();
    println!("e2e: {CONNECTIONS} keep-alive connections, 256-byte POST bodies, {secs} s per run");

    // 1. Through syncgate vs direct (issue 2).
    let direct = load(w1, secs, body.clone()).await;
    print("direct to worker", &direct);
    let running = start(&config(&[w1], "statuses = []"), None).await;
    let proxied = load(running.proxy_addrs()[0], secs, body.clone()).await;
    print("through syncgate (1 backend)", &proxied);
    println!(
        "ratio: throughput {:.2}x of direct, p50 {:.2}x, p99 {:.2}x",
        proxied.rps / direct.rps,
        proxied.p50_us as f64 / direct.p50_us.max(1) as f64,
        proxied.p99_us as f64 / direct.p99_us.max(1) as f64
    );
    running.shutdown().await;

    // 2. Guard on vs off, on traffic that never sees a 401 (issue 4).
    let off = start(&config(&[w1, w2], "statuses = []"), None).await;
    let r_off = load(off.proxy_addrs()[0], secs, body.clone()).await;
    print("guard off (2 backends)", &r_off);
    off.shutdown().await;
    let on = start(&config(&[w1, w2], "statuses = [401, 403]"), None).await;
    let r_on = load(on.proxy_addrs()[0], secs, body.clone()).await;
    print("guard on (2 backends)", &r_on);
    on.shutdown().await;
    println!(
        "ratio guard on/off: throughput {:.3}, p99 {:.3}",
        r_on.rps / r_off.rps,
        r_on.p99_us as f64 / r_off.p99_us.max(1) as f64
    );

    // 2b. The credential memories on 2xx traffic (issues 11 and 16): with the default
    // `credential`, every 2xx fingerprints its key and records it in the accepted memory.
    // Alternated twice: the machine is shared, so compare the ratios of one run.
    for round in 1..=2 {
        let without = start(
            &config(
                &[w1, w2],
                "statuses = [401, 403]
credential = []",
            ),
            None,
        )
        .await;
        let r_without = load(without.proxy_addrs()[0], secs, body.clone()).await;
        print("guard on, no credentials", &r_without);
        without.shutdown().await;
        let with = start(&config(&[w1, w2], "statuses = [401, 403]"), None).await;
        let r_with = load(with.proxy_addrs()[0], secs, body.clone()).await;
        print("guard on, credentials remembered", &r_with);
        with.shutdown().await;
        println!(
            "ratio credentials/none (round {round}): throughput {:.3}, p50 {:.3}, p99 {:.3}",
            r_with.rps / r_without.rps,
            r_with.p50_us as f64 / r_without.p50_us.max(1) as f64,
            r_with.p99_us as f64 / r_without.p99_us.max(1) as f64
        );
    }

    // 3. Reload cost with 1,000 backends (issue 3).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    let many: Vec<SocketAddr> = (0..1000)
        .map(|i| format!("127.0.0.2:{}", 20_000 + i).parse().unwrap())
        .collect();
    let big = config(&many, "")
        .replace("interval = \"100ms\"", "interval = \"5s\"")
        .replace("timeout = \"90ms\"", "timeout = \"1s\"");
    std::fs::write(&path, &big).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    let mut api = Vec::new();
    for i in 0..10 {
        std::fs::write(&path, format!("{big}\n# {i}\n")).unwrap();
        let t = Instant::now();
        running.control().reload("api").await.unwrap();
        api.push(t.elapsed());
    }
    api.sort();
    let mut watched = Vec::new();
    for i in 0..5 {
        let g = running.control().status().generation;
        let t = Instant::now();
        std::fs::write(&path, format!("{big}\n# w{i}\n")).unwrap();
        while running.control().status().generation == g {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        watched.push(t.elapsed());
    }
    watched.sort();
    println!(
        "reload, 1,000 backends: read+parse+validate+build+swap median {:?} (max {:?}); file write to swap median {:?} (includes the 150 ms debounce)",
        api[api.len() / 2],
        api[api.len() - 1],
        watched[watched.len() / 2]
    );
    running.shutdown().await;

    // 4. Throughput with a reload every 100 ms vs none (issue 3).
    let text = config(&[w1, w2], "");
    let steady = start(&text, Some(&path)).await;
    let r_none = load(steady.proxy_addrs()[0], secs, body.clone()).await;
    print("no reloads", &r_none);
    steady.shutdown().await;
    let reloading = start(&text, Some(&path)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The file watcher debounces bursts (150 ms), so the writer triggers each reload itself;
    // the watcher's own check of the same bytes is then a no-op.
    let writer = {
        let (path, stop, text) = (path.clone(), stop.clone(), text.clone());
        let control = reloading.control().clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let t = text.replace(
                    "name = \"w1\"",
                    &format!("name = \"w1\"\nweight = {}", 1 + i % 7),
                );
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, t).unwrap();
                std::fs::rename(&tmp, &path).unwrap();
                control.reload("api").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let r_reload = load(reloading.proxy_addrs()[0], secs, body.clone()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    print("a reload every 100 ms", &r_reload);
    println!(
        "ratio reloading/steady: throughput {:.3} ({} reloads applied, {} failed)",
        r_reload.rps / r_none.rps,
        reloading.control().status().reloads_ok,
        reloading.control().status().reloads_failed
    );
    if let Some(e) = reloading.control().status().last_error {
        println!("last reload error: {:?}", e.errors);
    }
    reloading.shutdown().await;
}
