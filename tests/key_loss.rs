//! The whole fleet loses its keys at once (issue 16): syncgate fails closed instead of passing
//! 401s, says so plainly, and recovers without an operator; a genuine cancellation still gets
//! its 401.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::{GuardOutcome, Running, State};

use support::*;

const KEYS: u64 = 2000;

/// Three synced workers holding 2,000 keys at generation 7.
async fn fleet() -> Vec<SimWorker> {
    let mut ws = Vec::new();
    for _ in 0..3 {
        let opts = SimOptions {
            total_keys: KEYS,
            generation: 7,
            synced: true,
        };
        ws.push(SimWorker::start(opts).await.unwrap());
    }
    ws
}

/// syncgate over `ws` probing every 100 ms, every worker ready.
async fn start_over(ws: &[SimWorker]) -> Running {
    let names = named(ws);
    let cfg = pool_config(
        &refs(&names),
        "",
        "interval = \"100ms\"\ntimeout = \"90ms\"",
    );
    let running = start(&cfg).await;
    for (name, _) in &names {
        wait_state(&running, name, State::Ready).await;
    }
    running
}

fn outcome(running: &Running, o: GuardOutcome) -> u64 {
    let idx = GuardOutcome::ALL.iter().position(|x| *x == o).unwrap();
    running
        .shared()
        .snapshot()
        .pool("push")
        .unwrap()
        .stats
        .guard_outcomes[idx]
        .load(Ordering::Relaxed)
}

/// `GET /api/backends`'s entry for pool `push`.
async fn pool_json(running: &Running) -> serde_json::Value {
    let admin = running.admin_addr();
    let body = send(&client(), admin, "GET", "/api/backends", None, Bytes::new())
        .await
        .unwrap()
        .json();
    body["pools"]["push"].clone()
}

/// What the clients saw, by phase.
#[derive(Default, Debug)]
struct Seen {
    /// Keys answered 2xx so far.
    accepted: HashSet<u64>,
    /// 401s for keys answered 2xx earlier: must stay 0.
    unauthorized_accepted: u64,
    /// 401s for keys never answered 2xx before, and when the last one came.
    unauthorized_unseen: u64,
    last_unauthorized: Option<Instant>,
    /// 503s, each with `Retry-After`.
    unavailable: u64,
    ok: u64,
    other: Vec<u16>,
}

/// Clients pushing with random valid keys until `stop`.
fn load(
    proxy: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..8)
        .map(|_| {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let key = fastrand::u64(0..KEYS);
                    let a = get(&c, proxy, key).await;
                    let mut t = seen.lock().unwrap();
                    match a.status.as_u16() {
                        200 => {
                            t.ok += 1;
                            t.accepted.insert(key);
                        }
                        401 if t.accepted.contains(&key) => t.unauthorized_accepted += 1,
                        401 => {
                            t.unauthorized_unseen += 1;
                            t.last_unauthorized = Some(Instant::now());
                        }
                        503 => {
                            assert!(
                                a.headers.contains_key("retry-after"),
                                "503 without Retry-After"
                            );
                            t.unavailable += 1;
                        }
                        s => t.other.push(s),
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_key_loss_fails_closed_then_recovers_without_an_operator() {
    let ws = fleet().await;
    let running = start_over(&ws).await;
    let proxy = running.proxy_addrs()[0];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load_started = Instant::now();
    let tasks = load(proxy, seen.clone(), stop.clone());
    wait_until(Duration::from_secs(10), "1,000 keys accepted", || async {
        seen.lock().unwrap().accepted.len() >= 1000
    })
    .await;
    // Every worker's key database is truncated at once; the probes keep claiming a complete
    // sync at generation 7, with the count they hold now.
    let before = seen.lock().unwrap().ok;
    let lost_at = Instant::now();
    for w in &ws {
        w.truncate_keys(0);
    }
    let rate = before as f64 / lost_at.duration_since(load_started).as_secs_f64();
    wait_until(Duration::from_secs(5), "every worker ejected", || async {
        ["w1", "w2", "w3"]
            .iter()
            .all(|n| state_of(&running, n) == Some(State::Ejected))
    })
    .await;
    let ejected_after = lost_at.elapsed();
    wait_until(Duration::from_secs(5), "clients get 503", || async {
        seen.lock().unwrap().unavailable > 50
    })
    .await;
    // The admin API says why, plainly (its reason follows the probes' reviews).
    let expected =
        "fleet-wide key loss suspected: keys fell 2000 → 0 at generation 7 (3 of 3 backends)";
    wait_until(Duration::from_secs(5), expected, || async {
        pool_json(&running).await["fail_closed"]["reason"] == expected
    })
    .await;
    let pool = pool_json(&running).await;
    assert_eq!(
        pool["key_sync"],
        serde_json::json!({"generation": 7, "keys": 2000})
    );
    assert!(pool["backends"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("keys fell 2000 → 0 at generation 7"));
    // The keys come back: the probes admit the workers again, no operator involved.
    for w in &ws {
        w.set_synced();
    }
    for n in ["w1", "w2", "w3"] {
        wait_state(&running, n, State::Ready).await;
    }
    let ok_after_return = seen.lock().unwrap().ok;
    wait_until(Duration::from_secs(5), "traffic flows again", || async {
        seen.lock().unwrap().ok > ok_after_return + 200
    })
    .await;
    wait_until(Duration::from_secs(5), "the pool serves again", || async {
        pool_json(&running).await["fail_closed"].is_null()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let t = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "ok {} 401 to accepted keys {} 401 to unseen keys {} (last {:?} after the loss) 503 {}; \
         ejected after {ejected_after:?}; {rate:.0} req/s; refused {}",
        t.ok,
        t.unauthorized_accepted,
        t.unauthorized_unseen,
        t.last_unauthorized
            .map(|l| l.saturating_duration_since(lost_at)),
        t.unavailable,
        outcome(&running, GuardOutcome::AcceptedAtGeneration),
    );
    assert!(t.other.is_empty(), "{:?}", t.other);
    assert_eq!(
        t.unauthorized_accepted, 0,
        "a key answered 2xx earlier got a 401"
    );
    // 401s for keys never seen before come only until the probes see the loss: about one
    // probe interval (100 ms; `fall` does not apply to a collapse) of such traffic. Both
    // bounds count from what this test saw: the ejection as its polling found it, each 401
    // as its client task read it, both possibly late on a loaded machine (300 ms allowed).
    if let Some(last) = t.last_unauthorized {
        assert!(
            last.saturating_duration_since(lost_at) <= ejected_after + Duration::from_millis(300),
            "a 401 after the workers were ejected"
        );
    }
    let until_ejected = ejected_after.as_secs_f64() + 0.1;
    assert!(
        (t.unauthorized_unseen as f64) <= (rate * until_ejected).max(30.0),
        "{} 401s to keys never seen, at {rate:.0} req/s, ejected after {ejected_after:?}",
        t.unauthorized_unseen
    );
    // One event when it started, one when it ended; and, as every backend was ejected, the
    // pool's outage and recovery once each (in whichever order the two watchers saw it).
    let pool_events: Vec<_> = running
        .shared()
        .events
        .since(0)
        .into_iter()
        .filter(|e| e.backend.is_empty())
        .map(|e| (e.from, e.to))
        .collect();
    let of = |state: &str| -> Vec<(&str, &str)> {
        pool_events
            .iter()
            .filter(|(from, to)| *from == state || *to == state)
            .copied()
            .collect()
    };
    assert_eq!(
        of("fail_closed"),
        vec![("serving", "fail_closed"), ("fail_closed", "serving")]
    );
    assert_eq!(
        of("unavailable"),
        vec![("serving", "unavailable"), ("unavailable", "serving")]
    );
    assert_eq!(pool_events.len(), 4, "{pool_events:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_misreport_their_keys_never_401_an_accepted_key() {
    let ws = fleet().await;
    let running = start_over(&ws).await;
    let proxy = running.proxy_addrs()[0];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(proxy, seen.clone(), stop.clone());
    wait_until(Duration::from_secs(10), "1,000 keys accepted", || async {
        seen.lock().unwrap().accepted.len() >= 1000
    })
    .await;
    // Every worker loses its keys while its probe keeps its last report (2,000 keys):
    // the probes cannot tell; only the fleet's own history of accepted keys can.
    for w in &ws {
        w.forget_keys();
    }
    wait_until(Duration::from_secs(5), "refusals", || async {
        outcome(&running, GuardOutcome::AcceptedAtGeneration) > 50
    })
    .await;
    let expected =
        "fleet-wide key loss suspected: 401 for credentials accepted at generation 7; answered 503";
    wait_until(Duration::from_secs(5), expected, || async {
        pool_json(&running).await["fail_closed"]["reason"] == expected
    })
    .await;
    for w in &ws {
        w.set_synced();
    }
    let ok = seen.lock().unwrap().ok;
    wait_until(Duration::from_secs(5), "traffic flows again", || async {
        seen.lock().unwrap().ok > ok + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let t = std::mem::take(&mut *seen.lock().unwrap());
    eprintln!(
        "ok {} 401 to accepted keys {} 401 to unseen keys {} 503 {}",
        t.ok, t.unauthorized_accepted, t.unauthorized_unseen, t.unavailable
    );
    assert!(t.other.is_empty(), "{:?}", t.other);
    assert_eq!(
        t.unauthorized_accepted, 0,
        "a key answered 2xx earlier got a 401"
    );
    // The charges for refused answers eject within the ejection cap only: never the whole pool.
    assert!(["w1", "w2", "w3"]
        .iter()
        .any(|n| state_of(&running, n) == Some(State::Ready)),);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_cancellation_still_reaches_its_client_as_401() {
    let ws = fleet().await;
    let running = start_over(&ws).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    assert_eq!(get(&c, proxy, 5).await.status, 200);
    // The account is cancelled: every worker drops the key and advances to generation 8.
    for w in &ws {
        w.remove_key(5);
    }
    // Until the probes report generation 8 the key was accepted at the current generation:
    // 503, never a 401; then its 401.
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = get(&c, proxy, 5).await;
        if a.status == 503 {
            assert!(a.headers.contains_key("retry-after"));
        }
        statuses.push(a.status.as_u16());
        if a.status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 401 for the cancelled key: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        statuses.iter().all(|s| matches!(s, 401 | 503)),
        "{statuses:?}"
    );
    for _ in 0..5 {
        assert_eq!(get(&c, proxy, 5).await.status, 401);
    }
    // Other keys were never disturbed, and the pool serves as before.
    assert_eq!(get(&c, proxy, 6).await.status, 200);
    assert!(pool_json(&running).await["key_sync"]["generation"] == 8);
    running.shutdown().await;
}
