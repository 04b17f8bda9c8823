//! Backend selection: power of two choices, smooth weighted round robin, consistent hashing.
//!
//! Synchronous and I/O-free, and generic over what it selects: anything that is an
//! [`Endpoint`] (the proxy's `Backend` is one). It knows neither the config nor the backend
//! type. Per-pool tables (the round-robin sequence, the hash ring) are built once when a
//! snapshot is built; a pick reads only atomics (readiness, in-flight, weights) and never
//! allocates. Only endpoints for which [`Endpoint::is_routable`] holds are ever returned, and
//! never one whose id is in `exclude` (the backends a request already tried).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What selection needs to know of a backend.
pub trait Endpoint {
    /// Process-unique id: what `exclude` lists.
    fn id(&self) -> u64;
    /// Whether it may receive a new request (the one readiness predicate).
    fn is_routable(&self) -> bool;
    /// Configured weight.
    fn weight(&self) -> u32;
    /// The weight now, slow start applied, in thousandths of a weight unit.
    fn effective_weight(&self, slow_start: Duration, now_ms: u64) -> u64;
    /// Requests forwarded to it and not finished yet.
    fn in_flight(&self) -> u64;
    /// A name stable across restarts, placing it on the hash ring.
    fn ring_name(&self) -> &str;
}

impl<E: Endpoint + ?Sized> Endpoint for Arc<E> {
    #[inline]
    fn id(&self) -> u64 {
        (**self).id()
    }
    #[inline]
    fn is_routable(&self) -> bool {
        (**self).is_routable()
    }
    #[inline]
    fn weight(&self) -> u32 {
        (**self).weight()
    }
    #[inline]
    fn effective_weight(&self, slow_start: Duration, now_ms: u64) -> u64 {
        (**self).effective_weight(slow_start, now_ms)
    }
    #[inline]
    fn in_flight(&self) -> u64 {
        (**self).in_flight()
    }
    fn ring_name(&self) -> &str {
        (**self).ring_name()
    }
}

/// A selection algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Least in-flight of two weighted random picks.
    P2c,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Consistent hashing on a request key.
    Hash,
}

/// Virtual nodes per unit of weight on the hash ring: enough that each backend's share of the
/// ring is within a few percent of its weight's share.
const VNODES_PER_WEIGHT: u32 = 160;
/// Longest round-robin sequence kept; larger weight sums are scaled down to fit.
const MAX_RR_SEQUENCE: u64 = 100_000;

/// Per-pool selection state.
#[derive(Debug)]
pub enum Balancer {
    /// Least in-flight (per unit of weight) of two weighted random picks.
    P2c,
    /// Smooth weighted round robin over a precomputed sequence of backend indices.
    RoundRobin {
        /// nginx's smooth weighted order for the configured weights.
        sequence: Vec<u32>,
        /// Position of the next pick; wraps.
        next: AtomicUsize,
    },
    /// Consistent hashing on a request header; falls back to p2c when the header is absent.
    Hash {
        /// `(point, backend index)`, sorted by point.
        ring: Vec<(u64, u32)>,
    },
}

/// What a pick needs to know besides the backends.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The hash key (with `balance = "hash"`).
    pub key: Option<&'a [u8]>,
    /// Backend ids already tried by this request.
    pub exclude: &'a [u64],
    /// The pool's slow-start window.
    pub slow_start: Duration,
    /// The time of the pick, in `clock::now_millis()` units (read from the coarse clock).
    pub now_ms: u64,
}

impl Balancer {
    /// Builds the tables for `backends` (in pool order) with their configured weights.
    pub fn new<E: Endpoint>(algorithm: Algorithm, backends: &[E]) -> Balancer {
        match algorithm {
            Algorithm::P2c => Balancer::P2c,
            Algorithm::RoundRobin => {
                let weights: Vec<u64> = backends.iter().map(|b| u64::from(b.weight())).collect();
                Balancer::RoundRobin {
                    sequence: smooth_weighted_sequence(&weights),
                    next: AtomicUsize::new(0),
                }
            }
            Algorithm::Hash => {
                let mut ring = Vec::new();
                for (i, b) in backends.iter().enumerate() {
                    for v in 0..b.weight().max(1) * VNODES_PER_WEIGHT {
                        let point = hash64(format!("{}#{v}", b.ring_name()).as_bytes());
                        ring.push((point, i as u32));
                    }
                }
                ring.sort_unstable();
                Balancer::Hash { ring }
            }
        }
    }

    /// Picks a backend index, or `None` when no eligible backend exists.
    pub fn pick<E: Endpoint>(&self, backends: &[E], cx: &PickContext<'_>) -> Option<usize> {
        match self {
            Balancer::P2c => p2c(backends, cx),
            Balancer::RoundRobin { sequence, next } => {
                let len = sequence.len();
                if len == 0 {
                    return None;
                }
                let start = next.fetch_add(1, Ordering::Relaxed);
                let mut fallback = None;
                for k in 0..len {
                    let i = sequence[(start + k) % len] as usize;
                    let b = &backends[i];
                    if !eligible(b, cx) {
                        continue;
                    }
                    // Slow start without shared mutable weights: a ramping backend takes its
                    // turn with probability effective/configured weight.
                    let full = u64::from(b.weight()) * 1000;
                    let eff = b.effective_weight(cx.slow_start, cx.now_ms);
                    if eff >= full || fastrand::u64(0..full.max(1)) < eff {
                        return Some(i);
                    }
                    fallback.get_or_insert(i);
                }
                fallback
            }
            Balancer::Hash { ring } => {
                let Some(key) = cx.key else {
                    return p2c(backends, cx);
                };
                if ring.is_empty() {
                    return None;
                }
                let h = hash64(key);
                let start = ring.partition_point(|(p, _)| *p < h);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|&i| eligible(&backends[i], cx))
            }
        }
    }
}

#[inline]
fn eligible<E: Endpoint>(b: &E, cx: &PickContext<'_>) -> bool {
    b.is_routable() && !cx.exclude.contains(&b.id())
}

/// Weighted random pick among eligible backends, skipping `skip`.
fn weighted_random<E: Endpoint>(
    backends: &[E],
    cx: &PickContext<'_>,
    skip: Option<usize>,
) -> Option<usize> {
    let weight = |i: usize, b: &E| -> u64 {
        if Some(i) == skip || !eligible(b, cx) {
            0
        } else {
            b.effective_weight(cx.slow_start, cx.now_ms)
        }
    };
    let total: u64 = backends.iter().enumerate().map(|(i, b)| weight(i, b)).sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(0..total);
    for (i, b) in backends.iter().enumerate() {
        let w = weight(i, b);
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

fn p2c<E: Endpoint>(backends: &[E], cx: &PickContext<'_>) -> Option<usize> {
    let a = weighted_random(backends, cx, None)?;
    let Some(b) = weighted_random(backends, cx, Some(a)) else {
        return Some(a);
    };
    // Compare in-flight per unit of weight without division: ia/wa <= ib/wb.
    let (ba, bb) = (&backends[a], &backends[b]);
    let wa = u128::from(ba.effective_weight(cx.slow_start, cx.now_ms).max(1));
    let wb = u128::from(bb.effective_weight(cx.slow_start, cx.now_ms).max(1));
    if u128::from(ba.in_flight()) * wb <= u128::from(bb.in_flight()) * wa {
        Some(a)
    } else {
        Some(b)
    }
}

/// nginx's smooth weighted round robin, unrolled into one period.
fn smooth_weighted_sequence(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_RR_SEQUENCE {
        for x in &mut w {
            *x = (*x * MAX_RR_SEQUENCE / sum).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(best as u32);
    }
    seq
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// FNV-1a followed by a murmur3 finaliser: stable across runs and builds (the ring must not
/// move when syncgate restarts) and well spread.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, State};
    use crate::events::EventLog;

    fn pool(weights: &[u32]) -> Vec<Arc<Backend>> {
        let events = EventLog::new(64);
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let b = Arc::new(Backend::new(
                    "p",
                    &format!("b{i}"),
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    w,
                ));
                b.transition(&[State::Pending], State::Ready, "test", &events);
                b
            })
            .collect()
    }

    fn cx<'a>(key: Option<&'a [u8]>, exclude: &'a [u64]) -> PickContext<'a> {
        PickContext {
            key,
            exclude,
            slow_start: Duration::ZERO,
            now_ms: crate::clock::now_millis(),
        }
    }

    fn eject(b: &Backend) {
        b.transition(&[State::Ready], State::Ejected, "test", &EventLog::new(1));
    }

    #[test]
    fn smooth_sequence_interleaves() {
        assert_eq!(
            smooth_weighted_sequence(&[5, 1, 1]),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(smooth_weighted_sequence(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn round_robin_follows_weights_and_skips_unready() {
        let backends = pool(&[2, 1]);
        let bal = Balancer::new(Algorithm::RoundRobin, &backends);
        let mut counts = [0; 2];
        for _ in 0..300 {
            counts[bal.pick(&backends, &cx(None, &[])).unwrap()] += 1;
        }
        assert_eq!(counts, [200, 100]);
        eject(&backends[0]);
        for _ in 0..10 {
            assert_eq!(bal.pick(&backends, &cx(None, &[])), Some(1));
        }
    }

    #[test]
    fn never_picks_unready_or_excluded() {
        let backends = pool(&[1, 1, 1]);
        eject(&backends[1]);
        let exclude = [backends[0].id];
        for kind in [Algorithm::P2c, Algorithm::RoundRobin, Algorithm::Hash] {
            let bal = Balancer::new(kind, &backends);
            for i in 0..200u32 {
                let key = i.to_string();
                let picked = bal.pick(&backends, &cx(Some(key.as_bytes()), &exclude));
                assert_eq!(picked, Some(2), "{kind:?}");
            }
        }
    }

    #[test]
    fn no_ready_backend_picks_nothing() {
        let backends = pool(&[1, 1]);
        eject(&backends[0]);
        eject(&backends[1]);
        for kind in [Algorithm::P2c, Algorithm::RoundRobin, Algorithm::Hash] {
            let bal = Balancer::new(kind, &backends);
            assert_eq!(bal.pick(&backends, &cx(Some(b"k"), &[])), None);
        }
    }

    #[test]
    fn p2c_prefers_less_loaded() {
        let backends = pool(&[1, 1]);
        let _busy: Vec<_> = (0..10).map(|_| backends[0].start_request()).collect();
        let bal = Balancer::new(Algorithm::P2c, &backends);
        for _ in 0..100 {
            assert_eq!(bal.pick(&backends, &cx(None, &[])), Some(1));
        }
    }

    #[test]
    fn p2c_spreads_by_weight() {
        let backends = pool(&[3, 1]);
        let mut counts = [0u32; 2];
        for _ in 0..20_000 {
            // Single pick, no in-flight load: the weighted random draw decides.
            counts[weighted_random(&backends, &cx(None, &[]), None).unwrap()] += 1;
        }
        let share = f64::from(counts[0]) / 20_000.0;
        assert!((0.72..0.78).contains(&share), "share {share}");
    }

    #[test]
    fn slow_start_reduces_share_of_new_backend() {
        let backends = pool(&[1, 1]);
        let mut c = cx(None, &[]);
        c.slow_start = Duration::from_secs(3600);
        // Both became ready just now; pretend backend 0 has been ready for the whole window.
        c.now_ms += 3_600_000;
        let fresh = Arc::new(Backend::new(
            "p",
            "fresh",
            "127.0.0.1:9".parse().unwrap(),
            1,
        ));
        fresh.transition(&[State::Pending], State::Ready, "t", &EventLog::new(1));
        let set = vec![backends[0].clone(), fresh];
        let mut c2 = c;
        c2.now_ms = crate::clock::now_millis();
        let mut fresh_picks = 0;
        for _ in 0..10_000 {
            if weighted_random(&set, &c2, None) == Some(1) {
                fresh_picks += 1;
            }
        }
        // Both just turned ready → both at the 1% floor → even split.
        assert!((4000..6000).contains(&fresh_picks), "{fresh_picks}");
        let old_ready = backends[0].effective_weight(c.slow_start, c.now_ms);
        assert_eq!(old_ready, 1000);
        assert!(set[1].effective_weight(c2.slow_start, c2.now_ms) < 100);
    }

    #[test]
    fn hash_is_sticky_and_moves_about_one_nth() {
        let backends = pool(&[1, 1, 1, 1, 1]);
        let bal = Balancer::new(Algorithm::Hash, &backends);
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| bal.pick(&backends, &cx(Some(k.as_bytes()), &[])).unwrap())
            .collect();
        // Sticky: the same key goes to the same backend.
        for (k, b) in keys.iter().zip(&before).take(100) {
            assert_eq!(bal.pick(&backends, &cx(Some(k.as_bytes()), &[])), Some(*b));
        }
        // Balanced within reason.
        for i in 0..5 {
            let n = before.iter().filter(|&&b| b == i).count();
            assert!((1400..2600).contains(&n), "backend {i} got {n}");
        }
        // One backend leaves: only its keys move (~1/5), and they spread over the others.
        eject(&backends[2]);
        let after: Vec<usize> = keys
            .iter()
            .map(|k| bal.pick(&backends, &cx(Some(k.as_bytes()), &[])).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(moved, before.iter().filter(|&&b| b == 2).count());
        assert!((1400..2600).contains(&moved), "moved {moved}");
        // It comes back (a join): exactly the same keys return to it.
        backends[2].transition(&[State::Ejected], State::Ready, "t", &EventLog::new(1));
        let back: Vec<usize> = keys
            .iter()
            .map(|k| bal.pick(&backends, &cx(Some(k.as_bytes()), &[])).unwrap())
            .collect();
        assert_eq!(back, before);
    }

    #[test]
    fn hash_without_key_falls_back_to_p2c() {
        let backends = pool(&[1, 1]);
        let bal = Balancer::new(Algorithm::Hash, &backends);
        let mut seen = [false; 2];
        for _ in 0..200 {
            seen[bal.pick(&backends, &cx(None, &[])).unwrap()] = true;
        }
        assert_eq!(seen, [true, true]);
    }
}
