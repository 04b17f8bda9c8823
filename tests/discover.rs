//! Discovery end to end: a test DNS server on `127.0.0.1` whose answers change at runtime,
//! syncgate in-process asking it (`resolver = ...`), and simulated workers listening on
//! `127.0.0.2`, `127.0.0.3`, ... on one port, like pods behind a headless Service.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::{Backend, Config, Running, State};

use support::dns::{Answer, SrvRecord, TestDns};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// `127.0.0.{last}`.
fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A worker on `127.0.0.{last}:port`.
async fn pod(last: u8, port: u16, synced: bool) -> std::io::Result<SimWorker> {
    let opts = SimOptions {
        synced,
        ..SimOptions::default()
    };
    SimWorker::start_on(SocketAddr::new(ip(last), port), opts).await
}

/// `n` synced workers on `127.0.0.2`, `127.0.0.3`, ... all on one port.
async fn pods(n: u8) -> Vec<SimWorker> {
    'again: for _ in 0..20 {
        let first = pod(2, 0, true).await.expect("first pod");
        let port = first.addr().port();
        let mut all = vec![first];
        for last in 3..2 + n {
            match pod(last, port, true).await {
                Ok(w) => all.push(w),
                Err(_) => {
                    // The port is taken on that address: try another one.
                    for w in all {
                        w.stop().await;
                    }
                    continue 'again;
                }
            }
        }
        return all;
    }
    panic!("no port free on every loopback address");
}

/// A `[[pools.push.discover]]` table asking `dns` every 100 ms.
fn source(dns: &TestDns, key: &str, value: &str, extra: &str) -> String {
    format!(
        "\n[[pools.push.discover]]\n{key} = \"{value}\"\ninterval = \"100ms\"\nresolver = \"{}\"\n{extra}\n",
        dns.addr()
    )
}

/// Pool `push` with these static backends (fast probes) and these discover tables.
fn config(statics: &[(&str, SocketAddr)], sources: &str) -> String {
    format!("{}{sources}", pool_config(statics, "", ""))
}

/// A backend by name, including removed ones still draining.
fn backend(running: &Running, name: &str) -> Option<Arc<Backend>> {
    running
        .shared()
        .all_backends()
        .into_iter()
        .find(|b| &*b.name == name)
}

/// Names of the snapshot's backends of pool `push` found by `source`.
fn discovered(running: &Running, source: &str) -> Vec<String> {
    running
        .shared()
        .snapshot()
        .backends()
        .filter(|b| b.source.as_deref() == Some(source))
        .map(|b| b.name.to_string())
        .collect()
}

async fn wait_discovered(running: &Running, source: &str, n: usize) {
    wait_until(WAIT, &format!("{n} backends from {source}"), || async {
        discovered(running, source).len() == n
    })
    .await;
}

/// `GET path` on the admin API, as JSON.
async fn admin_json(client: &HttpClient, running: &Running, path: &str) -> Value {
    send(
        client,
        running.admin_addr(),
        "GET",
        path,
        None,
        Bytes::new(),
    )
    .await
    .expect("admin answers")
    .json()
}

/// `POST path` on the admin API.
async fn admin_post(client: &HttpClient, running: &Running, path: &str) -> support::Answer {
    send(
        client,
        running.admin_addr(),
        "POST",
        path,
        None,
        Bytes::new(),
    )
    .await
    .expect("admin answers")
}

/// The first discover source of pool `push` as `GET /api/backends` shows it.
async fn source_status(client: &HttpClient, running: &Running) -> Value {
    admin_json(client, running, "/api/backends").await["pools"]["push"]["discover"][0].clone()
}

/// `GET /metrics` as text.
async fn metrics(client: &HttpClient, running: &Running) -> String {
    let answer = send(
        client,
        running.admin_addr(),
        "GET",
        "/metrics",
        None,
        Bytes::new(),
    )
    .await
    .expect("metrics");
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// `(backend, from, to)` of the events whose reason contains `needle`.
fn events_with(running: &Running, needle: &str) -> Vec<(String, &'static str, &'static str)> {
    running
        .shared()
        .events
        .since(0)
        .into_iter()
        .filter(|e| e.reason.contains(needle))
        .map(|e| (e.backend, e.from, e.to))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_appears_in_dns_with_no_keys_gets_no_traffic_until_synced_and_no_client_sees_a_401(
) {
    let dns = TestDns::start().await;
    let ws = pods(2).await;
    let port = ws[0].addr().port();
    dns.set("workers.test", Answer::Addrs(vec![ip(2), ip(3)]));
    let text = config(
        &[],
        &source(&dns, "dns", &format!("workers.test:{port}"), ""),
    );
    let running = start(&text).await;
    let name = |last: u8| format!("workers.test-127-0-0-{last}-{port}");
    wait_state(&running, &name(2), State::Ready).await;
    wait_state(&running, &name(3), State::Ready).await;

    // Client agents send valid keys the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, unauthorized, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let proxy = running.proxy_addrs()[0];
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, unauthorized, other) = (
            stop.clone(),
            ok.clone(),
            unauthorized.clone(),
            other.clone(),
        );
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let answer = get(&c, proxy, fastrand::u64(0..1000)).await;
                match answer.status.as_u16() {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    401 => unauthorized.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // A new pod with an empty key database shows up in DNS.
    let late = pod(4, port, false).await.expect("late pod");
    dns.set("workers.test", Answer::Addrs(vec![ip(2), ip(3), ip(4)]));
    wait_state(&running, &name(4), State::Pending).await;
    wait_until(WAIT, "the new pod probed 5 times", || async {
        late.probes() >= 5
    })
    .await;
    assert_eq!(state_of(&running, &name(4)), Some(State::Pending));
    assert_eq!(late.requests(), 0, "an unsynced pod got traffic");
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 0, "the load did not run");

    // It syncs its keys; only then is it admitted and does it get traffic.
    late.begin_sync(Duration::from_millis(500));
    wait_state(&running, &name(4), State::Ready).await;
    wait_until(WAIT, "the new pod serves requests", || async {
        late.requests() >= 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    assert_eq!(
        unauthorized.load(Ordering::Relaxed),
        0,
        "a client saw a 401"
    );
    assert_eq!(other.load(Ordering::Relaxed), 0, "a client saw an error");
    assert!(
        !late
            .status_counts()
            .iter()
            .any(|(status, _)| *status == 401),
        "the new pod was asked before its sync completed: {:?}",
        late.status_counts()
    );
    // The join is an event naming its source, and the admin API shows the source.
    let joined = events_with(&running, "discovered (source workers.test)");
    assert!(joined
        .iter()
        .any(|(backend, from, to)| *backend == name(4) && *from == "absent" && *to == "pending"));
    let c = client();
    let status = source_status(&c, &running).await;
    assert_eq!(status["kind"], "dns");
    assert_eq!(status["name"], "workers.test");
    assert_eq!(
        status["addresses"],
        serde_json::json!([
            format!("127.0.0.2:{port}"),
            format!("127.0.0.3:{port}"),
            format!("127.0.0.4:{port}")
        ])
    );
    assert!(status["last_resolved"].is_string());
    assert!(status["last_error"].is_null());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_disappears_drains_without_failing_any_in_flight_request() {
    let dns = TestDns::start().await;
    let ws = pods(2).await;
    let port = ws[0].addr().port();
    dns.set("workers.test", Answer::Addrs(vec![ip(2), ip(3)]));
    let text = config(
        &[],
        &source(&dns, "dns", &format!("workers.test:{port}"), "name = \"w\""),
    );
    let running = start(&text).await;
    let (a, b) = (format!("w-127-0-0-2-{port}"), format!("w-127-0-0-3-{port}"));
    wait_state(&running, &a, State::Ready).await;
    wait_state(&running, &b, State::Ready).await;
    let leaving = backend(&running, &b).expect("b");

    // Requests in flight on the pod about to leave.
    ws[1].set_delay(Duration::from_millis(1800));
    let proxy = running.proxy_addrs()[0];
    let mut in_flight = Vec::new();
    wait_until(WAIT, "a request in flight on b", || {
        in_flight.push(tokio::spawn(async move {
            get(&client(), proxy, fastrand::u64(0..1000)).await.status
        }));
        let busy = leaving.in_flight() > 0;
        async move { busy }
    })
    .await;

    dns.set("workers.test", Answer::Addrs(vec![ip(2)]));
    wait_until(WAIT, "b draining", || async {
        leaving.state() == State::Draining
    })
    .await;
    assert_eq!(leaving.info().reason, "vanished from DNS (source w)");
    assert!(leaving.in_flight() > 0, "the drain did not wait for b");
    assert_eq!(discovered(&running, "w"), [a]);
    // New requests go to the pod that stays.
    let c = client();
    for _ in 0..20 {
        let answer = get(&c, proxy, fastrand::u64(0..1000)).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["x-worker"], ws[0].addr().to_string());
    }
    for task in in_flight {
        assert_eq!(task.await.expect("request task"), 200);
    }
    wait_until(WAIT, "b forgotten once idle", || async {
        backend(&running, &b).is_none()
    })
    .await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_servfail_empty_answers_and_nxdomain_keep_the_last_known_set() {
    let dns = TestDns::start().await;
    dns.set("workers.test", Answer::Addrs(vec![ip(2), ip(3)]));
    let text = config(&[], &source(&dns, "dns", "workers.test:7000", ""));
    let running = start(&text).await;
    wait_discovered(&running, "workers.test", 2).await;
    let before: Vec<u64> = running
        .shared()
        .snapshot()
        .backends()
        .map(|b| b.id)
        .collect();
    let c = client();
    for (answer, error) in [
        (Answer::Drop, "timeout"),
        (Answer::ServFail, "Server Failure"),
        (Answer::Addrs(vec![]), "has no records"),
        (Answer::NxDomain, "does not exist (NXDOMAIN)"),
    ] {
        dns.set("workers.test", answer);
        wait_until(WAIT, &format!("last_error {error}"), || async {
            source_status(&c, &running).await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(error))
        })
        .await;
        let now: Vec<u64> = running
            .shared()
            .snapshot()
            .backends()
            .map(|b| b.id)
            .collect();
        assert_eq!(now, before, "the set changed after: {error}");
        assert_eq!(
            source_status(&c, &running).await["addresses"],
            serde_json::json!(["127.0.0.2:7000", "127.0.0.3:7000"])
        );
    }
    let text = metrics(&c, &running).await;
    for result in ["ok", "timeout", "servfail", "empty", "nxdomain"] {
        assert!(
            text.contains(&format!(
                "syncgate_discovery_resolutions_total{{pool=\"push\",source=\"workers.test\",result=\"{result}\"}}"
            )),
            "no {result} resolutions counted:\n{text}"
        );
    }
    assert!(text.contains("syncgate_backends{pool=\"push\",source=\"workers.test\"} 2"));
    // An answer again: the set follows it.
    dns.set("workers.test", Answer::Addrs(vec![ip(3)]));
    wait_discovered(&running, "workers.test", 1).await;
    assert!(source_status(&c, &running).await["last_error"].is_null());
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_at_start_leaves_the_source_empty_and_the_rest_of_the_config_running() {
    let dns = TestDns::start().await;
    let ws = workers(1).await;
    let text = config(
        &[("w1", ws[0].addr())],
        &source(&dns, "dns", "missing.test:7000", ""),
    );
    let running = start(&text).await;
    wait_state(&running, "w1", State::Ready).await;
    let c = client();
    wait_until(WAIT, "the source reports NXDOMAIN", || async {
        source_status(&c, &running).await["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.test does not exist (NXDOMAIN)"))
    })
    .await;
    let status = source_status(&c, &running).await;
    assert_eq!(status["addresses"], serde_json::json!([]));
    assert!(status["last_resolved"].is_null());
    assert!(status["last_attempt"].is_string());
    assert_eq!(get(&c, running.proxy_addrs()[0], 1).await.status, 200);
    let backends = admin_json(&c, &running, "/api/backends").await;
    let list = backends["pools"]["push"]["backends"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["source"], "static");
    // The name appears later: its address joins.
    dns.set("missing.test", Answer::Addrs(vec![ip(2)]));
    wait_discovered(&running, "missing.test", 1).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_and_ports_and_a_name_with_several_addresses_give_one_backend_per_address() {
    let dns = TestDns::start().await;
    dns.set(
        "multi.test",
        Answer::Addrs(vec![ip(2), ip(3), "::1".parse().unwrap()]),
    );
    dns.set("t1.test", Answer::Addrs(vec![ip(4), ip(5)]));
    dns.set("t2.test", Answer::Addrs(vec![ip(6)]));
    let srv = |weight, port, target: &str| SrvRecord {
        weight,
        port,
        target: target.into(),
    };
    dns.set(
        "_push._tcp.glue.test",
        Answer::Srv {
            records: vec![srv(10, 7001, "t1.test"), srv(0, 7002, "t2.test")],
            glue: true,
        },
    );
    dns.set(
        "_push._tcp.noglue.test",
        Answer::Srv {
            records: vec![srv(5, 7003, "t2.test")],
            glue: false,
        },
    );
    let sources = [
        source(&dns, "dns", "multi.test:7000", "name = \"a\"\nweight = 3"),
        source(&dns, "srv", "_push._tcp.glue.test", "name = \"pods\""),
        source(&dns, "srv", "_push._tcp.noglue.test", ""),
    ]
    .concat();
    let running = start(&config(&[], &sources)).await;
    wait_discovered(&running, "a", 3).await;
    wait_discovered(&running, "pods", 3).await;
    wait_discovered(&running, "_push._tcp.noglue.test", 1).await;
    let found: Vec<(String, String, u32)> = running
        .shared()
        .snapshot()
        .backends()
        .map(|b| (b.name.to_string(), b.addr.to_string(), b.weight()))
        .collect();
    let expected = [
        ("a-127-0-0-2-7000", "127.0.0.2:7000", 3),
        ("a-127-0-0-3-7000", "127.0.0.3:7000", 3),
        ("a---1-7000", "[::1]:7000", 3),
        ("pods-127-0-0-4-7001", "127.0.0.4:7001", 10),
        ("pods-127-0-0-5-7001", "127.0.0.5:7001", 10),
        ("pods-127-0-0-6-7002", "127.0.0.6:7002", 1),
        ("_push._tcp.noglue.test-127-0-0-6-7003", "127.0.0.6:7003", 5),
    ];
    let expected: Vec<(String, String, u32)> = expected
        .iter()
        .map(|(n, a, w)| (n.to_string(), a.to_string(), *w))
        .collect();
    assert_eq!(found, expected);
    let c = client();
    let pools = admin_json(&c, &running, "/api/backends").await;
    let kinds: Vec<&str> = pools["pools"]["push"]["discover"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["dns", "srv", "srv"]);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_large_for_udp_is_fetched_over_tcp() {
    let dns = TestDns::start().await;
    let many: Vec<IpAddr> = (0..300u16)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1)))
        .collect();
    dns.set("many.test", Answer::Addrs(many));
    let text = format!(
        "{}{}",
        pool_config(&[], "", "interval = \"2s\"\ntimeout = \"1s\""),
        source(&dns, "dns", "many.test:7000", "")
    );
    let running = start(&text).await;
    wait_discovered(&running, "many.test", 300).await;
    assert!(dns.tcp_queries() > 0, "no query came over TCP");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_backend_is_drained_and_enabled_by_its_name() {
    let dns = TestDns::start().await;
    let ws = pods(1).await;
    let port = ws[0].addr().port();
    dns.set("workers.test", Answer::Addrs(vec![ip(2)]));
    let running = start(&config(
        &[],
        &source(&dns, "dns", &format!("workers.test:{port}"), ""),
    ))
    .await;
    let name = format!("workers.test-127-0-0-2-{port}");
    wait_state(&running, &name, State::Ready).await;
    let c = client();
    let drained = admin_post(&c, &running, &format!("/api/backends/push/{name}/drain")).await;
    assert_eq!(drained.status, 200);
    assert_eq!(drained.json()["changed"], true);
    assert_eq!(drained.json()["source"], "workers.test");
    wait_state(&running, &name, State::Disabled).await;
    // DNS still answers its address: it stays disabled, the same state object.
    let before = backend(&running, &name).expect("backend");
    let resolved = dns.queries();
    wait_until(WAIT, "two more resolutions", || async {
        dns.queries() >= resolved + 4
    })
    .await;
    assert_eq!(state_of(&running, &name), Some(State::Disabled));
    assert!(Arc::ptr_eq(&before, &backend(&running, &name).unwrap()));
    let enabled = admin_post(&c, &running, &format!("/api/backends/push/{name}/enable")).await;
    assert_eq!(enabled.status, 200);
    assert_eq!(enabled.json()["changed"], true);
    wait_state(&running, &name, State::Ready).await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_back_in_dns_while_draining_keeps_its_state_object() {
    let dns = TestDns::start().await;
    let ws = pods(2).await;
    let port = ws[0].addr().port();
    dns.set("workers.test", Answer::Addrs(vec![ip(2), ip(3)]));
    let running = start(&config(
        &[],
        &source(&dns, "dns", &format!("workers.test:{port}"), "name = \"w\""),
    ))
    .await;
    let b = format!("w-127-0-0-3-{port}");
    wait_state(&running, &format!("w-127-0-0-2-{port}"), State::Ready).await;
    wait_state(&running, &b, State::Ready).await;
    let original = backend(&running, &b).unwrap();
    // A slow request keeps it draining once it vanishes.
    ws[1].set_delay(Duration::from_millis(1500));
    let proxy = running.proxy_addrs()[0];
    let mut in_flight = Vec::new();
    wait_until(WAIT, "a request in flight on b", || {
        in_flight.push(tokio::spawn(async move {
            get(&client(), proxy, fastrand::u64(0..1000)).await.status
        }));
        let busy = original.in_flight() > 0;
        async move { busy }
    })
    .await;
    dns.set("workers.test", Answer::Addrs(vec![ip(2)]));
    wait_until(WAIT, "b draining", || async {
        original.state() == State::Draining
    })
    .await;
    dns.set("workers.test", Answer::Addrs(vec![ip(2), ip(3)]));
    wait_state(&running, &b, State::Ready).await;
    assert!(Arc::ptr_eq(&original, &backend(&running, &b).unwrap()));
    assert!(!original.is_removed());
    assert_eq!(
        running
            .shared()
            .all_backends()
            .iter()
            .filter(|x| *x.name == *b)
            .count(),
        1
    );
    assert!(!events_with(&running, "discovered again (source w)").is_empty());
    for task in in_flight {
        assert_eq!(task.await.unwrap(), 200);
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_change_leaves_other_pools_alone_and_composes_with_reloads() {
    let dns = TestDns::start().await;
    let ws = workers(2).await;
    dns.set("workers.test", Answer::Addrs(vec![ip(2)]));
    let other = format!(
        "\n[pools.other]\n[pools.other.probe]\ninterval = \"50ms\"\ntimeout = \"45ms\"\n\
         [[pools.other.backends]]\nname = \"o1\"\naddr = \"{}\"\n\
         [[routes]]\npath_prefix = \"/\"\npool = \"push\"\n",
        ws[1].addr()
    );
    let file = |statics: &[(&str, SocketAddr)]| {
        format!(
            "{}{other}",
            config(statics, &source(&dns, "dns", "workers.test:7000", ""))
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, file(&[("w1", ws[0].addr())])).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    wait_discovered(&running, "workers.test", 1).await;
    let snapshot = running.shared().snapshot();
    let other_pool = snapshot.pool("other").unwrap().clone();
    let w1 = backend(&running, "w1").unwrap();

    // DNS change: the other pool is the same object; the static backend keeps its state.
    dns.set("workers.test", Answer::Addrs(vec![ip(2), ip(3)]));
    wait_discovered(&running, "workers.test", 2).await;
    let snapshot = running.shared().snapshot();
    assert!(Arc::ptr_eq(&other_pool, snapshot.pool("other").unwrap()));
    assert!(Arc::ptr_eq(&w1, &backend(&running, "w1").unwrap()));
    assert_eq!(
        snapshot.generation, 1,
        "a DNS change is no config generation"
    );

    // A reload keeps the discovered backends; a DNS change after it keeps the reload's.
    std::fs::write(
        &path,
        file(&[
            ("w1", ws[0].addr()),
            ("w2", "127.0.0.9:7000".parse().unwrap()),
        ]),
    )
    .unwrap();
    assert_eq!(running.control().reload("api").await.unwrap(), 2);
    assert_eq!(discovered(&running, "workers.test").len(), 2);
    dns.set("workers.test", Answer::Addrs(vec![ip(4)]));
    wait_until(WAIT, "the new answer", || async {
        discovered(&running, "workers.test") == ["workers.test-127-0-0-4-7000"]
    })
    .await;
    assert!(backend(&running, "w2").is_some_and(|b| !b.is_removed()));
    running.shutdown().await;
}
