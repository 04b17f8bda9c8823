//! Cancelled accounts get their 401 at the cost of one forward (issue 11): the guard remembers
//! confirmed 401s per credential, forgets them when the fleet's key set moves, and keeps its
//! memory within bounds whatever the traffic.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::{GuardOutcome, Running, State};

use support::*;

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

/// `[pools.push.guard]` keys before the probe table of a test config.
fn with_guard(cfg: &str, guard: &str) -> String {
    cfg.replace(
        "[pools.push.probe]",
        &format!("[pools.push.guard]\n{guard}\n\n[pools.push.probe]"),
    )
}

/// What clients saw.
#[derive(Default, Debug)]
struct Tally {
    /// Statuses of each cancelled key, in the order they came back to its client.
    cancelled: HashMap<u64, Vec<u16>>,
    /// Statuses of valid keys.
    valid: HashMap<u16, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_accounts_get_their_401_at_the_cost_of_one_forward() {
    let ws = workers(3).await;
    let names = named(&ws);
    // Probes every 500 ms: a wiped worker whose probe lies is taken out by the guard, and
    // comes back only after `rise` probes, so the run sees few re-admissions.
    let cfg = pool_config(
        &refs(&names),
        "",
        "interval = \"500ms\"\ntimeout = \"400ms\"",
    );
    let running = start(&cfg).await;
    for n in ["w1", "w2", "w3"] {
        wait_state(&running, n, State::Ready).await;
    }
    let proxy = running.proxy_addrs()[0];
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients = 8;
    let per_client = 600;
    let run = |tally: Arc<Mutex<Tally>>| async move {
        let c = client();
        for _ in 0..per_client / 3 {
            // 30% of requests from 50 cancelled accounts (keys no worker holds), pushing on
            // as agents do until they are told 401.
            let cancelled = fastrand::u32(0..100) < 30;
            let key = if cancelled {
                5000 + fastrand::u64(0..50)
            } else {
                fastrand::u64(0..1000)
            };
            let status = get(&c, proxy, key).await.status.as_u16();
            let mut t = tally.lock().unwrap();
            if cancelled {
                t.cancelled.entry(key).or_default().push(status);
            } else {
                *t.valid.entry(status).or_default() += 1;
            }
        }
    };
    // Three rounds; before the last, w2 loses its key database while its probe keeps
    // claiming a complete sync.
    for round in 0..3 {
        if round == 2 {
            ws[1].forget_keys();
        }
        let tasks: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(run(tally.clone())))
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let requests = (clients * (per_client / 3) * 3) as u64;
    let cancelled: u64 = t.cancelled.values().map(|v| v.len() as u64).sum();
    let upstream: u64 = ws.iter().map(|w| w.requests()).sum();
    let ratio = upstream as f64 / requests as f64;
    eprintln!(
        "cancelled {cancelled} of {requests}, valid {:?}, upstream {upstream} ({ratio:.3} per client request), remembered {}, confirmed {}",
        t.valid,
        outcome(&running, GuardOutcome::Remembered),
        outcome(&running, GuardOutcome::Confirmed),
    );
    // Every cancelled account gets 401, from its first confirmation on, never a 503.
    for (key, statuses) in &t.cancelled {
        let first = statuses.iter().position(|s| *s == 401);
        let after: Vec<_> = statuses[first.unwrap_or(0)..].to_vec();
        assert!(
            first.is_some() && after.iter().all(|s| *s == 401),
            "key-{key}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| matches!(s, 401 | 503)),
            "key-{key}: {statuses:?}"
        );
    }
    // The wiped worker never let a 401 for a valid key through, and was ejected.
    assert_eq!(
        t.valid.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "valid keys: {:?}",
        t.valid
    );
    let ejected = running
        .shared()
        .events
        .since(0)
        .into_iter()
        .any(|e| e.backend == "w2" && e.to == "ejected" && e.reason == "contradicted 401");
    assert!(ejected, "the wiped worker was not ejected");
    assert!(
        ratio <= 1.05,
        "{ratio:.3} upstream requests per client request"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_bump_forgets_the_remembered_401s() {
    let ws = workers(3).await;
    let names = named(&ws);
    let running = start(&pool_config(&refs(&names), "balance = \"round_robin\"", "")).await;
    for n in ["w1", "w2", "w3"] {
        wait_state(&running, n, State::Ready).await;
    }
    let proxy = running.proxy_addrs()[0];
    let c = client();
    // Key 1000 is no account yet: confirmed once, then remembered.
    assert_eq!(get(&c, proxy, 1000).await.status, 401);
    assert_eq!(get(&c, proxy, 1000).await.status, 401);
    assert_eq!(outcome(&running, GuardOutcome::Confirmed), 1);
    assert_eq!(outcome(&running, GuardOutcome::Remembered), 1);
    // The account is created: w1 and w2 load it (generation 101); w3 lags a generation
    // behind, within max_generation_lag, and stays ready.
    ws[0].add_keys(1);
    ws[1].add_keys(1);
    let fleet = running
        .shared()
        .snapshot()
        .pool("push")
        .unwrap()
        .fleet
        .clone();
    wait_until(
        Duration::from_secs(5),
        "the probes report generation 101",
        || async { fleet.view().mark.is_some_and(|m| m.generation == 101) },
    )
    .await;
    assert_eq!(fleet.view().epoch, 1, "the memories forgot");
    // From now on the key gets its 200s, also when w3 (still without it) answers first:
    // its 401 is no longer remembered, so a peer is asked and contradicts it.
    for _ in 0..30 {
        let a = get(&c, proxy, 1000).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    assert!(ws[2].requests() > 1, "w3 was asked");
    assert_eq!(outcome(&running, GuardOutcome::Remembered), 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memories_stay_within_their_bounds_under_a_flood_of_distinct_keys() {
    let mut ws = Vec::new();
    for _ in 0..2 {
        let opts = SimOptions {
            total_keys: 1_000_000,
            ..SimOptions::default()
        };
        ws.push(SimWorker::start(opts).await.unwrap());
    }
    let names = named(&ws);
    let cfg = with_guard(
        &pool_config(&refs(&names), "", ""),
        "remember_max = 100\naccepted_max = 1000\nretry_budget_ratio = 10.0",
    );
    let running = start(&cfg).await;
    for n in ["w1", "w2"] {
        wait_state(&running, n, State::Ready).await;
    }
    let proxy = running.proxy_addrs()[0];
    // 4,000 distinct accepted keys and 800 distinct unknown ones.
    let keys: Vec<u64> = (0..4000u64)
        .map(|n| n * 200)
        .chain((0..800u64).map(|n| 2_000_000 + n))
        .collect();
    let keys = Arc::new(Mutex::new(keys));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (keys, seen) = (keys.clone(), seen.clone());
            tokio::spawn(async move {
                let c = client();
                loop {
                    let Some(key) = keys.lock().unwrap().pop() else {
                        return;
                    };
                    let a = send(&c, proxy, "POST", "/v1/batch", Some(key), Bytes::new())
                        .await
                        .unwrap();
                    seen.lock().unwrap().insert((key, a.status.as_u16()));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.iter().filter(|(_, s)| *s == 200).count(), 4000);
    assert_eq!(seen.iter().filter(|(_, s)| *s == 401).count(), 800);
    let admin = running.admin_addr();
    let body = send(&client(), admin, "GET", "/api/backends", None, Bytes::new())
        .await
        .unwrap()
        .json();
    let memory = &body["pools"]["push"]["guard_memory"];
    eprintln!("{memory}");
    for (name, capacity) in [("remembered", 100), ("accepted", 1000)] {
        let m = &memory[name];
        assert_eq!(m["capacity"], capacity, "{name}: {m}");
        let entries = m["entries"].as_u64().unwrap();
        assert!(entries <= capacity && entries > capacity / 2, "{name}: {m}");
        assert!(m["evictions"].as_u64().unwrap() > 0, "{name}: {m}");
    }
    running.shutdown().await;
}
