//! A fixed-rate HTTP/1.1 load generator with latency correction, for `benches/compare.sh`'s
//! "rate" section. Request `i` is due at `start + i / rate`; each of the keep-alive
//! connections takes the next due request when it is free. Early, it waits for the due time
//! and counts from the timer's wake-up (tokio's timer fires on whole milliseconds, so the
//! requests of one millisecond leave together, as oha's do). Late, because every connection
//! was still waiting for an answer when the request fell due, it sends at once and counts from
//! the due time: a stall of the proxy, the backend or the host counts for every request it
//! delayed (coordinated omission corrected, as wrk2 and `oha --latency-correction` do).
//!
//! Why not oha, which compare.sh used until stop 31: its own latencies, read request by request
//! (`--db-url`), spike at 4.0-4.5 s and 8.0-8.5 s of every run with no proxy in the path at
//! all, most likely where its list of results doubles (131,072 and 262,144 entries at 31,500
//! req/s). A run of 5 s then measures each proxy's recovery from the client's own pause. This
//! client keeps its results in storage allocated, and touched, before the first request,
//! sends every due request (none is cut at the end of the run), and runs on one thread.
//! `--windows MS` prints the p99 of each window of due times, to check that the client itself
//! does not pause (`rate` straight to the backend, no proxy).
//!
//! Prints one line, `p50 p95 p99 p99.9` in ms then the achieved rate in req/s, and exits 1 if
//! any answer was not 2xx, any request failed or went unanswered for 10 s, or a connection
//! could not be opened (2 on a bad argument).
//!
//!     cargo run --release --example rate -- 127.0.0.1:18080 32000 5 [--conns 64] [--windows 500]

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1 as client;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What the run's requests have in common; shared by the connections of one thread.
struct Run {
    start: Instant,
    rate: u64,
    /// The index of the next request due.
    next: Cell<u64>,
    /// Latency of request `i` in nanoseconds, `u64::MAX` until it is answered.
    latencies: RefCell<Vec<u64>>,
    non_2xx: Cell<u64>,
    errors: Cell<u64>,
    last_done: Cell<Instant>,
}

impl Run {
    /// When request `i` is due.
    fn due(&self, i: u64) -> Instant {
        let nanos = u128::from(i) * 1_000_000_000 / u128::from(self.rate);
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: rate ADDR RATE SECS [--conns N] [--windows MS]");
        std::process::exit(2)
    };
    if args.len() < 3 {
        usage();
    }
    let addr: SocketAddr = args[0].parse().unwrap_or_else(|_| usage());
    let rate: u64 = args[1].parse().unwrap_or_else(|_| usage());
    let secs: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let (mut conns, mut window_ms) = (64usize, None);
    let mut rest = args[3..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--conns", Some(n)) if n > 0 => conns = n as usize,
            ("--windows", Some(ms)) if ms > 0 => window_ms = Some(ms),
            _ => usage(),
        }
    }
    if rate == 0 || secs == 0 {
        usage();
    }
    let total = rate.saturating_mul(secs);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let run = local.block_on(&rt, async move {
        // Every connection open before the first request is due, and the results' storage
        // written once, so that neither a connect nor a page fault lands inside the run.
        let mut senders = Vec::with_capacity(conns);
        for _ in 0..conns {
            let io = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| fail(&format!("connect to {addr}: {e}")));
            io.set_nodelay(true).ok();
            let (sender, conn) = client::handshake(TokioIo::new(io))
                .await
                .unwrap_or_else(|e| fail(&format!("handshake with {addr}: {e}")));
            tokio::task::spawn_local(conn);
            senders.push(sender);
        }
        let start = Instant::now() + Duration::from_millis(20);
        let run = Rc::new(Run {
            start,
            rate,
            next: Cell::new(0),
            latencies: RefCell::new(vec![u64::MAX; usize::try_from(total).expect("total")]),
            non_2xx: Cell::new(0),
            errors: Cell::new(0),
            last_done: Cell::new(start),
        });
        let host = addr.to_string();
        let tasks: Vec<_> = senders
            .into_iter()
            .map(|mut sender| {
                let run = run.clone();
                let host = host.clone();
                tokio::task::spawn_local(async move {
                    loop {
                        let i = run.next.get();
                        if i >= total {
                            break;
                        }
                        run.next.set(i + 1);
                        // Early: wait for the timer, and count from its wake-up (tokio's
                        // timer fires on whole milliseconds: its rounding is the client's).
                        // Late (this connection was busy past the due time): count from
                        // the due time, the wait included.
                        let due = run.due(i);
                        let start = if due > Instant::now() {
                            tokio::time::sleep_until(due).await;
                            Instant::now()
                        } else {
                            due
                        };
                        let answered =
                            tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut sender, &host))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(format!("no answer within {REQUEST_TIMEOUT:?}"))
                                });
                        let now = Instant::now();
                        match answered {
                            Ok(ok) => {
                                if !ok {
                                    run.non_2xx.set(run.non_2xx.get() + 1);
                                }
                                let nanos = now.saturating_duration_since(start).as_nanos();
                                run.latencies.borrow_mut()[i as usize] =
                                    u64::try_from(nanos).unwrap_or(u64::MAX - 1);
                                run.last_done.set(run.last_done.get().max(now));
                            }
                            Err(e) => {
                                eprintln!("request {i}: {e}");
                                run.errors.set(run.errors.get() + 1);
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("connection task");
        }
        run
    });

    let latencies = run.latencies.borrow();
    if let Some(ms) = window_ms {
        let per_window = usize::try_from(rate.saturating_mul(ms) / 1000)
            .unwrap_or(1)
            .max(1);
        for (w, chunk) in latencies.chunks(per_window).enumerate() {
            let sorted = answered_sorted(chunk);
            eprintln!(
                "window {:>6} ms  p99 {:>7.3} ms",
                (w * per_window) as u64 * 1000 / rate,
                percentile(&sorted, 990)
            );
        }
    }
    let sorted = answered_sorted(&latencies);
    let elapsed = run.last_done.get().saturating_duration_since(run.start);
    let achieved = sorted.len() as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "{:.3} {:.3} {:.3} {:.3} {:.0}",
        percentile(&sorted, 500),
        percentile(&sorted, 950),
        percentile(&sorted, 990),
        percentile(&sorted, 999),
        achieved
    );
    let (non_2xx, errors) = (run.non_2xx.get(), run.errors.get());
    if non_2xx > 0 || errors > 0 {
        eprintln!("{non_2xx} answers not 2xx, {errors} failed requests");
        std::process::exit(1);
    }
}

/// Ends the run as failed (exit status 1, as for a non-2xx answer).
fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(1)
}

/// A request without an answer by then counts as failed: a proxy that holds one open ends
/// the run as INVALID instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one `GET /` and reads its answer whole: whether its status was 2xx.
async fn exchange(
    sender: &mut client::SendRequest<Empty<Bytes>>,
    host: &str,
) -> Result<bool, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = Request::get("/")
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let ok = response.status().is_success();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(ok)
}

/// The latencies of the answered requests, sorted.
fn answered_sorted(latencies: &[u64]) -> Vec<u64> {
    let mut sorted: Vec<u64> = latencies
        .iter()
        .copied()
        .filter(|&l| l != u64::MAX)
        .collect();
    sorted.sort_unstable();
    sorted
}

/// The nearest-rank percentile of sorted nanoseconds, in milliseconds; `per_mille` 990 is
/// the p99. Integer ranks: a float product can land just above a whole rank.
fn percentile(sorted: &[u64], per_mille: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (per_mille * sorted.len())
        .div_ceil(1000)
        .clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}
