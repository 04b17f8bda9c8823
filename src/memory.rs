//! The guard's bounded memories of credentials: keyed fingerprints, and a fixed-size,
//! lock-free table of them.
//!
//! A request's credential (its account key, wherever the pool's `credential` setting finds it)
//! is never kept: only a [`Fingerprint`], a keyed hash (SipHash with a random key drawn once
//! per process) of the credential and the name of the place it was found. Fingerprints never
//! leave the process: they are not logged, counted by value, or shown by the admin API.
//!
//! A [`Table`] holds fingerprints with the pool's key-set epoch and a coarse time. It is
//! set-associative: a fingerprint has one set of [`WAYS`] slots, and every slot is two atomic
//! words, each carrying the fingerprint's tag, so a reader never trusts one word alone. Its
//! size is fixed when it is made: a flood of distinct keys evicts entries, it never grows the
//! table. The request path reads and writes it without a lock or an allocation.
//!
//! Forgetting is O(1): an entry is valid only at the epoch it was written at, and the pool's
//! epoch moves when its newest key-set generation does (see `fleet.rs`). Racing writers may
//! lose an entry or leave one older than it could be; a table of remembered facts can afford
//! that, and every mix of two writes to one slot is either detected (tags differ) or pairs two
//! genuine observations of the same fingerprint.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::clock::coarse_secs;

/// Slots per set: four slots of two words fill one 64-byte cache line.
pub const WAYS: usize = 4;

/// A keyed hash of a credential. Its `Debug` form does not show it. Never zero, so that an
/// `Option<Fingerprint>` in every request's future takes 8 bytes, not 16 (a hash of zero
/// counts as one: a collision of one value in 2^64).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(NonZeroU64);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

impl Fingerprint {
    /// The fingerprint of `credential` found at `source` (e.g. `header:authorization`).
    pub fn of(source: &str, credential: &[u8]) -> Fingerprint {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        Fingerprint::from_bits(
            KEY.get_or_init(RandomState::new)
                .hash_one((source, credential)),
        )
    }

    fn from_bits(bits: u64) -> Fingerprint {
        Fingerprint(NonZeroU64::new(bits).unwrap_or(NonZeroU64::MIN))
    }

    fn bits(self) -> u64 {
        self.0.get()
    }

    /// This credential's fingerprint for an answer with `status`: a confirmed 401 is not a
    /// confirmed 403.
    pub fn with_status(self, status: u16) -> Fingerprint {
        // The golden ratio spreads the few statuses over all bits; the result stays as
        // unpredictable as the keyed hash it comes from.
        Fingerprint::from_bits(self.bits() ^ u64::from(status).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// The upper half, kept in both words of a slot.
    fn tag(self) -> u64 {
        self.bits() >> 32
    }
}

/// The coarse clock of the tables: seconds since the process started, from 1 (0 marks an
/// empty slot). 32 bits last 136 years.
pub fn coarse_now() -> u32 {
    u32::try_from(coarse_secs().saturating_add(1)).unwrap_or(u32::MAX)
}

/// One set: [`WAYS`] slots of `[tag | time, tag | epoch]`.
#[derive(Default)]
#[repr(align(64))]
struct Set([[AtomicU64; 2]; WAYS]);

/// One slot's words as read.
#[derive(Clone, Copy)]
struct Entry {
    tag: u64,
    time: u32,
    epoch: u32,
}

impl Entry {
    fn read(slot: &[AtomicU64; 2]) -> Option<Entry> {
        let a = slot[0].load(Ordering::Relaxed);
        let time = a as u32;
        if time == 0 {
            return None;
        }
        let b = slot[1].load(Ordering::Relaxed);
        // Two writers racing on one slot may leave words of two fingerprints: not an entry.
        (a >> 32 == b >> 32).then_some(Entry {
            tag: a >> 32,
            time,
            epoch: b as u32,
        })
    }

    fn live(self, epoch: u32, now: u32, ttl: u32) -> bool {
        self.epoch == epoch && now.saturating_sub(self.time) < ttl
    }
}

/// A fixed-size memory of fingerprints, each valid at one epoch for a TTL (whole seconds).
pub struct Table {
    sets: Box<[Set]>,
    /// Live entries overwritten to make room for another fingerprint.
    evictions: AtomicU64,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Default for Table {
    /// A table that remembers nothing.
    fn default() -> Table {
        Table::new(0)
    }
}

impl Table {
    /// A table of at least `max_entries` slots (rounded up to a multiple of 4, the ways of a
    /// set); 0 makes a table that remembers nothing.
    pub fn new(max_entries: u32) -> Table {
        let sets = (max_entries as usize).div_ceil(WAYS);
        Table {
            sets: (0..sets).map(|_| Set::default()).collect(),
            evictions: AtomicU64::new(0),
        }
    }

    /// How many entries it can hold.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Bytes of its slots: fixed at creation.
    pub fn footprint(&self) -> usize {
        std::mem::size_of_val(&*self.sets)
    }

    /// Live entries overwritten to make room, since the table was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The set of `fp`, or none for a table of no entries.
    #[inline]
    fn set(&self, fp: Fingerprint) -> Option<&Set> {
        // Lemire's multiply-shift maps the lower half onto the sets without a division.
        let index = ((fp.bits() & 0xFFFF_FFFF) * self.sets.len() as u64) >> 32;
        self.sets.get(index as usize)
    }

    /// Whether `fp` was written at `epoch` less than `ttl` seconds before `now`.
    #[inline]
    pub fn contains(&self, fp: Fingerprint, epoch: u32, now: u32, ttl: u32) -> bool {
        let Some(set) = self.set(fp) else {
            return false;
        };
        set.0.iter().any(|slot| {
            Entry::read(slot).is_some_and(|e| e.tag == fp.tag() && e.live(epoch, now, ttl))
        })
    }

    /// Remembers `fp` at `epoch` and `now`. An entry for `fp` at `epoch` younger than
    /// `refresh` seconds is left as it is, so a hot credential costs a read, not a write.
    /// Otherwise the slot taken is `fp`'s own, else an empty or dead one (another epoch, or
    /// older than `ttl`), else the oldest, whose eviction is counted.
    #[inline]
    pub fn insert(&self, fp: Fingerprint, epoch: u32, now: u32, ttl: u32, refresh: u32) {
        let Some(set) = self.set(fp) else {
            return;
        };
        let mut victim: Option<(usize, Option<Entry>)> = None;
        // Ties (coarse times are often equal) go to the first slot looked at: start at a place
        // the fingerprint picks, so that a flood spreads over every way of a set. From the
        // tag's bits: the set index comes from the top of the lower half, so its bits would
        // give every fingerprint of a set the same start.
        let start = (fp.bits() >> 32) as usize;
        for i in (0..WAYS).map(|k| (start + k) % WAYS) {
            let slot = &set.0[i];
            let entry = Entry::read(slot);
            match entry {
                Some(e) if e.tag == fp.tag() => {
                    if e.epoch == epoch && now.saturating_sub(e.time) < refresh {
                        return;
                    }
                    victim = Some((i, None));
                    break;
                }
                Some(e) if e.live(epoch, now, ttl) => {
                    let older = match victim {
                        None => true,
                        Some((_, Some(v))) => e.time < v.time,
                        Some((_, None)) => false,
                    };
                    if older {
                        victim = Some((i, Some(e)));
                    }
                }
                // Empty or dead: as good as free.
                _ => {
                    if !matches!(victim, Some((_, None))) {
                        victim = Some((i, None));
                    }
                }
            }
        }
        let Some((i, evicted)) = victim else {
            return;
        };
        if evicted.is_some() {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let slot = &set.0[i];
        slot[1].store(fp.tag() << 32 | u64::from(epoch), Ordering::Relaxed);
        slot[0].store(fp.tag() << 32 | u64::from(now), Ordering::Relaxed);
    }

    /// Live entries at `epoch`, `now`, for `ttl`: a scan of the whole table, for the admin API
    /// and metrics, never for the request path.
    pub fn len(&self, epoch: u32, now: u32, ttl: u32) -> usize {
        self.sets
            .iter()
            .flat_map(|set| set.0.iter())
            .filter(|slot| Entry::read(slot).is_some_and(|e| e.live(epoch, now, ttl)))
            .count()
    }
}

/// A pool's two memories, sized by its config; kept across reloads that do not resize them.
#[derive(Debug, Default)]
pub struct Memories {
    /// Confirmed guarded answers, by [`Fingerprint::with_status`].
    pub rejected: Table,
    /// Credentials answered 2xx.
    pub accepted: Table,
}

impl Memories {
    /// Memories of `rejected` and `accepted` entries at most.
    pub fn new(rejected: u32, accepted: u32) -> Memories {
        Memories {
            rejected: Table::new(rejected),
            accepted: Table::new(accepted),
        }
    }

    /// Whether these memories have the sizes `rejected` and `accepted` ask for.
    pub fn fits(&self, rejected: u32, accepted: u32) -> bool {
        self.rejected.capacity() == (rejected as usize).div_ceil(WAYS) * WAYS
            && self.accepted.capacity() == (accepted as usize).div_ceil(WAYS) * WAYS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u64) -> Fingerprint {
        Fingerprint::of("header:authorization", format!("Bearer key-{n}").as_bytes())
    }

    #[test]
    fn fingerprints_depend_on_source_credential_and_status() {
        assert_eq!(fp(1), fp(1));
        assert_ne!(fp(1), fp(2));
        assert_ne!(
            Fingerprint::of("header:authorization", b"k"),
            Fingerprint::of("query:api_key", b"k")
        );
        assert_ne!(fp(1).with_status(401), fp(1).with_status(403));
        assert_eq!(format!("{:?}", fp(1)), "Fingerprint(..)");
    }

    #[test]
    fn an_entry_lives_for_its_ttl_at_its_epoch() {
        let t = Table::new(64);
        t.insert(fp(1), 3, 100, 60, 0);
        assert!(t.contains(fp(1), 3, 100, 60));
        assert!(t.contains(fp(1), 3, 159, 60));
        assert!(!t.contains(fp(1), 3, 160, 60), "expired");
        assert!(!t.contains(fp(1), 4, 100, 60), "another epoch forgets it");
        assert!(!t.contains(fp(2), 3, 100, 60));
        assert_eq!(t.len(3, 100, 60), 1);
        assert_eq!(t.len(4, 100, 60), 0);
    }

    #[test]
    fn a_fresh_entry_is_not_rewritten_a_stale_one_is() {
        let t = Table::new(64);
        t.insert(fp(1), 3, 100, 600, 75);
        // Within the refresh period: left as it is, so its age counts from 100.
        t.insert(fp(1), 3, 150, 600, 75);
        assert!(!t.contains(fp(1), 3, 700, 600));
        // Past it: written again.
        t.insert(fp(1), 3, 180, 600, 75);
        assert!(t.contains(fp(1), 3, 700, 600));
        // A new epoch rewrites at once.
        t.insert(fp(1), 4, 181, 600, 75);
        assert!(t.contains(fp(1), 4, 181, 600));
        assert_eq!(t.len(4, 181, 600), 1, "one slot per fingerprint");
    }

    #[test]
    fn a_full_set_evicts_its_oldest_live_entry() {
        // One set: four slots.
        let t = Table::new(4);
        assert_eq!(t.capacity(), 4);
        for n in 0..4 {
            t.insert(fp(n), 1, 10 + n as u32, 60, 0);
        }
        assert_eq!(t.len(1, 20, 60), 4);
        t.insert(fp(9), 1, 20, 60, 0);
        assert!(!t.contains(fp(0), 1, 20, 60), "the oldest went");
        assert!((1..4).all(|n| t.contains(fp(n), 1, 20, 60)));
        assert!(t.contains(fp(9), 1, 20, 60));
        assert_eq!(t.evictions(), 1);
        // Dead entries (another epoch) are taken before any live one is evicted.
        t.insert(fp(10), 2, 21, 60, 0);
        assert_eq!(t.evictions(), 1);
    }

    #[test]
    fn a_table_of_no_entries_remembers_nothing() {
        let t = Table::new(0);
        t.insert(fp(1), 1, 1, 60, 0);
        assert!(!t.contains(fp(1), 1, 1, 60));
        assert_eq!((t.capacity(), t.len(1, 1, 60)), (0, 0));
    }

    #[test]
    fn a_flood_of_distinct_keys_never_grows_the_table() {
        let t = Table::new(1000);
        let (capacity, bytes) = (t.capacity(), t.footprint());
        assert_eq!(capacity, 1000);
        assert_eq!(bytes, 250 * 64);
        for n in 0..200_000u64 {
            let f = Fingerprint::of("query:api_key", &n.to_le_bytes());
            t.insert(f, 1, 5, 600, 75);
        }
        assert_eq!((t.capacity(), t.footprint()), (capacity, bytes));
        let live = t.len(1, 5, 600);
        assert!(live <= capacity && live > capacity * 9 / 10, "{live}");
        assert!(t.evictions() >= 200_000 - capacity as u64);
        // The newest keys are the ones kept.
        let kept = (199_900..200_000u64)
            .filter(|n| {
                t.contains(
                    Fingerprint::of("query:api_key", &n.to_le_bytes()),
                    1,
                    5,
                    600,
                )
            })
            .count();
        assert!(kept > 80, "{kept} of the last 100 kept");
    }

    #[test]
    fn mixed_words_of_two_fingerprints_are_no_entry() {
        let t = Table::new(4);
        t.insert(fp(1), 1, 10, 60, 0);
        let set = t.set(fp(1)).unwrap();
        let slot = set
            .0
            .iter()
            .find(|s| s[0].load(Ordering::Relaxed) != 0)
            .unwrap();
        // Another fingerprint's epoch word over this one's time word, as a race could leave.
        slot[1].store((fp(1).tag() ^ 1) << 32 | 1, Ordering::Relaxed);
        assert!(!t.contains(fp(1), 1, 10, 60));
    }
}
