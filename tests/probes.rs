//! Probes slower than their interval (issue 11): accepted, and never overlapping.

mod support;

use std::time::{Duration, Instant};

use syncgate::State;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_slower_than_its_interval_delays_the_next_and_never_overlaps_it() {
    let ws = workers(2).await;
    let names = named(&ws);
    // The readiness answer takes 150 ms; the interval is 50 ms and the timeout 500 ms, as an
    // operator copying Kubernetes settings (timeoutSeconds > periodSeconds) would write.
    for w in &ws {
        w.set_probe_delay(Duration::from_millis(150));
    }
    let cfg = pool_config(
        &refs(&names),
        "",
        "interval = \"50ms\"\ntimeout = \"500ms\"\nrise = 2",
    );
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    wait_state(&running, "w2", State::Ready).await;
    let (probes, since) = (ws[0].probes(), Instant::now());
    wait_until(Duration::from_secs(5), "six more probes of w1", || async {
        ws[0].probes() >= probes + 6
    })
    .await;
    let elapsed = since.elapsed();
    // Each probe started when the one before had finished: 150 ms apart, not 50.
    assert!(
        elapsed >= Duration::from_millis(5 * 150),
        "six probes in {elapsed:?}"
    );
    for w in &ws {
        assert_eq!(w.max_concurrent_probes(), 1, "probes overlapped");
    }
    assert_eq!(
        get(&client(), running.proxy_addrs()[0], 1).await.status,
        200
    );
    assert_eq!(state_of(&running, "w1"), Some(State::Ready));
    running.shutdown().await;
}
