//! Micro-benchmarks of the per-request decisions: a balancer pick, a route lookup, and the
//! credential memory's work on a 2xx (fingerprint, then insert) and on a guarded answer
//! (lookup). Run with `cargo bench --bench balance`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use syncgate::{
    Algorithm, Backend, Balancer, Config, EventLog, Fingerprint, MemoryTable, PickContext, Shared,
    State,
};

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

fn memory(c: &mut Criterion) {
    let credential = b"Bearer 3f9c2e7a4b1d8e6f0a5c9b2d7e4f1a3c";
    c.bench_function("memory/fingerprint", |b| {
        b.iter(|| black_box(Fingerprint::of("authorization", black_box(credential))))
    });
    let table = MemoryTable::new(100_000);
    let fp = Fingerprint::of("authorization", credential);
    table.insert(fp, 1, 10, 600, 75);
    // The usual 2xx: the credential's entry is there and fresh, so it is only read.
    c.bench_function("memory/insert-hot", |b| {
        b.iter(|| table.insert(black_box(fp), 1, 10, 600, 75))
    });
    // A flood of distinct keys: every insert writes, most evict.
    let flood: Vec<Fingerprint> = (0..1_000_000u64)
        .map(|n| Fingerprint::of("authorization", &n.to_le_bytes()))
        .collect();
    let mut i = 0;
    c.bench_function("memory/insert-flood", |b| {
        b.iter(|| {
            i = (i + 1) % flood.len();
            table.insert(black_box(flood[i]), 1, 10, 600, 75)
        })
    });
    c.bench_function("memory/contains", |b| {
        b.iter(|| black_box(table.contains(black_box(fp), 1, 10, 600)))
    });
}

criterion_group!(benches, picks, routes, memory);
criterion_main!(benches);
