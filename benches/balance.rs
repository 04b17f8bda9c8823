//! Micro-benchmarks of the per-request decisions: a balancer pick and a route lookup.
//! Run with `cargo bench --bench balance`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use syncgate::{Algorithm, Backend, Balancer, Config, EventLog, PickContext, Shared, State};

fn backends(n: usize) -> Vec<Arc<Backend>> {
    let events = EventLog::new(16);
    (0..n)
        .map(|i| {
            let b = Arc::new(Backend::new(
                "push",
                &format!("w{i}"),
                format!("127.0.0.1:{}", 10_000 + i).parse().unwrap(),
                1,
            ));
            b.transition(&[State::Pending], State::Ready, "bench", &events);
            b
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    for n in [4usize, 32] {
        let set = backends(n);
        for (label, kind) in [
            ("p2c", Algorithm::P2c),
            ("round_robin", Algorithm::RoundRobin),
            ("hash", Algorithm::Hash),
        ] {
            let bal = Balancer::new(kind, &set);
            c.bench_function(&format!("pick/{label}/{n}"), |b| {
                b.iter(|| {
                    let cx = PickContext {
                        key: Some(b"Bearer key-123456"),
                        exclude: &[],
                        slow_start: std::time::Duration::from_secs(10),
                        now_ms: syncgate::now_millis(),
                    };
                    black_box(bal.pick(&set, black_box(&cx)))
                })
            });
        }
    }
}

fn routes(c: &mut Criterion) {
    let mut toml = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\n");
    for p in 0..8 {
        toml.push_str(&format!(
            "[[pools.p{p}.backends]]\nname = \"w\"\naddr = \"127.0.0.1:{}\"\n[[routes]]\nhost = \"*.tenant{p}.example.com\"\npath_prefix = \"/v{p}/\"\npool = \"p{p}\"\n",
            20_000 + p
        ));
    }
    let shared = Shared::new(Config::parse(&toml, None).unwrap());
    let snap = shared.snapshot();
    c.bench_function("route/8-pools", |b| {
        b.iter(|| {
            black_box(snap.route(
                black_box("push.tenant7.example.com"),
                black_box("/v7/batch"),
            ))
        })
    });
}

criterion_group!(benches, picks, routes);
criterion_main!(benches);
