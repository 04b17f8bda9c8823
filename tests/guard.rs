//! The response guard end to end: second opinions, ejection on contradiction, passive outlier
//! detection, the ejection cap and the retry budget.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use syncgate::demo::SimWorker;
use syncgate::GuardOutcome;
use syncgate::Running;
use syncgate::State;

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

fn reason(running: &Running, name: &str) -> String {
    let snap = running.shared().snapshot();
    let b = snap.backends().find(|b| &*b.name == name).unwrap();
    let r = b.info().reason.clone();
    r
}

/// Starts syncgate over `ws` (named w1, w2, ...) with slow probes, `pool` keys and the
/// `guard` keys of `[pools.push.guard]`, and waits until every worker is ready.
async fn start_guarded(ws: &[SimWorker], pool: &str, guard: &str) -> Running {
    let names = named(ws);
    let cfg = pool_config(&refs(&names), pool, SLOW_PROBES).replace(
        "[pools.push.probe]",
        &format!("[pools.push.guard]\n{guard}\n\n[pools.push.probe]"),
    );
    let running = start(&cfg).await;
    for (name, _) in &names {
        wait_state(&running, name, State::Ready).await;
    }
    running
}

/// Probes admit at once (rise 1) and then stay silent for a minute: whatever happens next is
/// the guard's doing, not the prober's.
const SLOW_PROBES: &str = "interval = \"60s\"\ntimeout = \"1s\"\nrise = 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_forgets_its_keys_never_leaks_a_401() {
    let ws = workers(3).await;
    let names = named(&ws);
    let cfg = pool_config(&refs(&names), "", SLOW_PROBES);
    let running = start(&cfg).await;
    let proxy = running.proxy_addrs()[0];
    for n in ["w1", "w2", "w3"] {
        wait_state(&running, n, State::Ready).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let unauthorized = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (stop, unauthorized) = (stop.clone(), unauthorized.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let a = get(&c, proxy, fastrand::u64(0..1000)).await;
                match a.status.as_u16() {
                    200 => {}
                    401 => {
                        unauthorized.fetch_add(1, Ordering::Relaxed);
                    }
                    s => panic!("unexpected status {s}"),
                }
            }
        }));
    }
    wait_until(Duration::from_secs(5), "traffic on w2", || async {
        ws[1].requests() > 50
    })
    .await;
    // w2 loses its key database; its probe keeps saying it is in sync.
    ws[1].forget_keys();
    wait_state(&running, "w2", State::Ejected).await;
    let after_ejection = ws[1].requests();
    wait_until(Duration::from_secs(5), "more traffic", || async {
        ws[0].requests() + ws[2].requests() > 500
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        unauthorized.load(Ordering::Relaxed),
        0,
        "a 401 reached a client"
    );
    assert_eq!(reason(&running, "w2"), "contradicted 401");
    // Ejected after exactly eject_after (3) contradictions; requests already in flight to it
    // when it was ejected may add a few more.
    let contradicted = outcome(&running, GuardOutcome::Contradicted);
    assert!(
        (3..=3 + 8).contains(&contradicted),
        "{contradicted} contradictions"
    );
    assert!(
        ws[1].requests() - after_ejection <= 8,
        "ejected backend kept getting traffic"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_gets_its_confirmed_401_then_its_remembered_one() {
    let ws = workers(2).await;
    let names = named(&ws);
    let running = start(&pool_config(&refs(&names), "", SLOW_PROBES)).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    wait_state(&running, "w2", State::Ready).await;
    let c = client();
    // Key 5000 is not an active account on any worker (they hold 1000 keys).
    for _ in 0..5 {
        assert_eq!(get(&c, proxy, 5000).await.status, 401);
    }
    assert_eq!(outcome(&running, GuardOutcome::Confirmed), 1);
    assert_eq!(outcome(&running, GuardOutcome::Remembered), 4);
    assert_eq!(outcome(&running, GuardOutcome::Contradicted), 0);
    assert_eq!(
        ws[0].requests() + ws[1].requests(),
        6,
        "the first 401 asked twice, the others once"
    );
    // Another unknown key is confirmed on its own.
    assert_eq!(get(&c, proxy, 5001).await.status, 401);
    assert_eq!(outcome(&running, GuardOutcome::Confirmed), 2);
    assert_eq!(state_of(&running, "w1"), Some(State::Ready));
    assert_eq!(state_of(&running, "w2"), Some(State::Ready));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_ready_worker_the_401_passes() {
    let ws = workers(2).await;
    let names = named(&ws);
    ws[1].set_probe_override(Some((503, "{}".into())));
    let running = start(&pool_config(&refs(&names), "", SLOW_PROBES)).await;
    let proxy = running.proxy_addrs()[0];
    wait_state(&running, "w1", State::Ready).await;
    let a = get(&client(), proxy, 5000).await;
    assert_eq!(a.status, 401);
    assert_eq!(ws[0].requests(), 1);
    assert_eq!(ws[1].requests(), 0);
    assert_eq!(outcome(&running, GuardOutcome::NoPeer), 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_replay_body_is_never_replayed() {
    let ws = workers(2).await;
    let running = start_guarded(
        &ws,
        "balance = \"round_robin\"",
        "max_replay_body = \"1KiB\"",
    )
    .await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    let big = Bytes::from(vec![b'x'; 4096]);
    let a = send(&c, proxy, "POST", "/v1/batch", Some(5000), big.clone())
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(
        ws[0].requests() + ws[1].requests(),
        1,
        "the large body was replayed"
    );
    assert_eq!(outcome(&running, GuardOutcome::TooLarge), 1);
    // A large body with a valid key streams through normally.
    let a = send(&c, proxy, "POST", "/v1/batch", Some(1), big)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["bytes"], 4096);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_replays() {
    let ws = workers(2).await;
    let running = start_guarded(
        &ws,
        "",
        "retry_budget_ratio = 0.0\nretry_budget_min_per_sec = 0",
    )
    .await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    // A peer exists but the budget forbids asking it: the 401 is unconfirmed, so the client
    // gets a 503 to retry, never the 401.
    for _ in 0..4 {
        let a = get(&c, proxy, 5000).await;
        assert_eq!(a.status, 503);
        assert_eq!(a.headers["retry-after"], "60");
        assert_eq!(
            a.json()["error"],
            "retry budget spent: answer not confirmed"
        );
    }
    assert_eq!(
        ws[0].requests() + ws[1].requests(),
        4,
        "no replay without budget"
    );
    assert_eq!(outcome(&running, GuardOutcome::BudgetSpent), 4);
    assert_eq!(outcome(&running, GuardOutcome::Replayed), 0);
    // Valid keys never need the budget.
    assert_eq!(get(&c, proxy, 1).await.status, 200);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_peer_neither_confirms_nor_contradicts() {
    let ws = workers(2).await;
    // The default outlier settings: a peer that fails every request stays the one whose
    // missing opinion keeps w1's 401s unconfirmed. Ejected for its 5xx answers, it would
    // leave w1 alone, and w1's 401s would pass.
    let running = start_guarded(&ws, "balance = \"round_robin\"", "eject_after = 1").await;
    let proxy = running.proxy_addrs()[0];
    // w1 refuses everything, w2 fails everything: nobody can confirm w1's 401.
    ws[0].forget_keys();
    ws[1].set_status_override(Some(500));
    let c = client();
    let mut statuses = Vec::new();
    // Far more 5xx answers from w2 (its own and its replays) than the five that ejected it
    // under the old default.
    for _ in 0..30 {
        let a = get(&c, proxy, 1).await;
        if a.status == 503 {
            assert_eq!(a.headers["retry-after"], "60");
        }
        statuses.push(a.status.as_u16());
    }
    assert!(
        !statuses.contains(&401),
        "an unconfirmed 401 leaked: {statuses:?}"
    );
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(outcome(&running, GuardOutcome::Unconfirmed) >= 1);
    assert_eq!(outcome(&running, GuardOutcome::Contradicted), 0);
    // With eject_after = 1, a single wrongly charged contradiction would have ejected w1.
    assert_eq!(state_of(&running, "w1"), Some(State::Ready));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_leaves_the_401_unconfirmed() {
    let mut ws = workers(2).await;
    let running = start_guarded(&ws, "retries = 1", "consecutive_connect_failures = 0").await;
    let proxy = running.proxy_addrs()[0];
    // w2 is gone but still ready (its next probe is a minute away); w1 refuses everything.
    ws.pop().unwrap().stop().await;
    ws[0].forget_keys();
    let c = client();
    for _ in 0..6 {
        let a = get(&c, proxy, 1).await;
        assert_eq!(a.status, 503, "{:?}", a.body);
        assert_eq!(a.headers["retry-after"], "60");
    }
    assert!(outcome(&running, GuardOutcome::Unconfirmed) >= 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_and_5xx_eject_within_the_cap() {
    let mut ws = workers(4).await;
    let running = start_guarded(
        &ws,
        "retries = 3",
        "consecutive_connect_failures = 2\nconsecutive_5xx = 3\nmax_ejection_percent = 50",
    )
    .await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    // w4 dies: connect failures are retried elsewhere, and eject it after two in a row.
    ws.pop().unwrap().stop().await;
    wait_until(Duration::from_secs(5), "w4 ejected", || async {
        assert_eq!(get(&c, proxy, 1).await.status, 200);
        state_of(&running, "w4") == Some(State::Ejected)
    })
    .await;
    assert_eq!(reason(&running, "w4"), "2 consecutive connect failures");
    // w3 answers 500 to everything: three in a row eject it.
    ws[2].set_status_override(Some(500));
    wait_until(Duration::from_secs(5), "w3 ejected", || async {
        get(&c, proxy, 1).await;
        state_of(&running, "w3") == Some(State::Ejected)
    })
    .await;
    assert_eq!(reason(&running, "w3"), "3 consecutive 5xx answers");
    // w2 fails too, but 2 of 4 are out already: the cap leaves it to the probes.
    ws[1].set_status_override(Some(500));
    for _ in 0..40 {
        get(&c, proxy, 1).await;
    }
    assert!(ws[1].requests() >= 3);
    assert_eq!(state_of(&running, "w2"), Some(State::Ready));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_an_opinion_is_skipped_for_the_next() {
    let ws = workers(3).await;
    // Contradictions must not eject w1 here: every request is a chance to see the skip.
    let running = start_guarded(&ws, "", "consecutive_5xx = 0\neject_after = 1000").await;
    let proxy = running.proxy_addrs()[0];
    // w1 refuses everything, w2 fails everything, w3 is sound: w1's 401s are settled by w3
    // even when w2 is asked first.
    ws[0].forget_keys();
    ws[1].set_status_override(Some(500));
    let c = client();
    let passed_500 = AtomicU64::new(0);
    // Until w2 has been asked as a peer at least once (more w2 requests than 500s passed on).
    wait_until(
        Duration::from_secs(10),
        "w2 asked for a second opinion",
        || async {
            let a = get(&c, proxy, 1).await;
            // 500: w2 picked first passes its own failure on; never a 401, never a 503.
            assert!(
                matches!(a.status.as_u16(), 200 | 500),
                "{} {:?}",
                a.status,
                a.body
            );
            if a.status == 500 {
                passed_500.fetch_add(1, Ordering::Relaxed);
            }
            ws[1].requests() > passed_500.load(Ordering::Relaxed)
        },
    )
    .await;
    assert!(outcome(&running, GuardOutcome::Contradicted) >= 1);
    assert_eq!(outcome(&running, GuardOutcome::Unconfirmed), 0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readmitted_backend_starts_its_failure_run_afresh() {
    let ws = workers(3).await;
    let names = named(&ws);
    // Probes every 100 ms with rise 1: an ejected backend whose probe passes is back at once.
    let cfg = pool_config(
        &refs(&names),
        "",
        "interval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1",
    )
    .replace(
        "[pools.push.probe]",
        "[pools.push.guard]\nconsecutive_5xx = 3\n\n[pools.push.probe]",
    );
    let running = start(&cfg).await;
    for n in ["w1", "w2", "w3"] {
        wait_state(&running, n, State::Ready).await;
    }
    let proxy = running.proxy_addrs()[0];
    let c = client();
    ws[2].set_status_override(Some(500));
    wait_until(Duration::from_secs(5), "w3 ejected", || async {
        get(&c, proxy, 1).await;
        state_of(&running, "w3") == Some(State::Ejected)
    })
    .await;
    wait_state(&running, "w3", State::Ready).await;
    // One more 5xx after re-admission is the first of a new run, not the fourth of the old.
    let served = ws[2].requests();
    wait_until(Duration::from_secs(5), "w3 answers once more", || async {
        get(&c, proxy, 1).await;
        ws[2].requests() > served
    })
    .await;
    assert_eq!(ws[2].requests(), served + 1);
    assert_eq!(state_of(&running, "w3"), Some(State::Ready));
    running.shutdown().await;
}
