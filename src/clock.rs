//! Time as syncgate reads and shows it: a cheap monotonic millisecond clock for atomics,
//! a coarse clock for the request path's bookkeeping, deadlines that cannot overflow, and the
//! one wall-clock format the admin API and the event log use (RFC 3339, UTC, milliseconds).
//!
//! The coarse clock exists because a request read the clock ten times: `clock_gettime` was
//! 1.8% of a proxied request's CPU. Some of those readings served timings of a second or so
//! (the pick's slow-start weight, the retry budget's slot, the guard memories' ages, when an
//! idle upstream connection was checked in), so a proxy thread's deadline sweeper
//! ([`crate::deadline::sweep`]) sets its thread's coarse clock every tick, and they read that.
//! Latencies, deadlines and connection timeouts still read the real clock. A coarse reading is
//! never later than the real time: an age measured from one against a real reading is never
//! short.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Far enough to be never, near enough to add to any `Instant` (tokio uses the same 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

thread_local! {
    /// The calling thread's coarse clock: its deadline sweeper's last reading, on a proxy
    /// thread while it serves; `None` elsewhere.
    static COARSE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Milliseconds since the process-wide monotonic origin; a cheap clock for atomics.
pub fn now_millis() -> u64 {
    millis_at(Instant::now())
}

/// [`now_millis`] of the instant `at` (1 for any instant before the origin).
fn millis_at(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // Offset by one so that 0 can mean "never".
    u64::try_from(at.saturating_duration_since(origin).as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Makes `now` the calling thread's coarse clock, until the next call; `None` returns the
/// thread to real readings (its sweeper stopped).
pub fn set_coarse(now: Option<Instant>) {
    let _ = COARSE.try_with(|c| c.set(now));
}

/// The monotonic clock, behind by at most one [`crate::deadline::TICK`] (and however late a
/// busy thread runs its sweeper) on a proxy thread; a real reading on any other thread. For
/// timings of a second or so (slow start, budgets, idle connections), never for latencies or
/// deadlines. Readings from different threads may disagree by as much.
pub fn coarse() -> Instant {
    COARSE
        .try_with(Cell::get)
        .ok()
        .flatten()
        .unwrap_or_else(Instant::now)
}

/// [`now_millis`], read from the [`coarse`] clock.
pub fn coarse_millis() -> u64 {
    millis_at(coarse())
}

/// `start + after`, or a far-off instant when that cannot be represented: `Instant + Duration`
/// panics on overflow, and a deadline on the request path must never panic (config limits keep
/// durations far below that, but a deadline does not rely on them).
pub fn deadline(start: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    start
        .checked_add(after)
        .or_else(|| start.checked_add(FAR_FUTURE))
        .unwrap_or(start)
}

/// Whole seconds of [`coarse_millis`]: the retry budget's slot clock, and the guard
/// memories' ages.
pub fn coarse_secs() -> u64 {
    coarse_millis() / 1000
}

/// `t` as RFC 3339, UTC, with milliseconds (`2026-01-02T03:04:05.678Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_the_last_reading_set_on_this_thread_and_real_without_one() {
        let before = Instant::now();
        assert!(coarse() >= before, "no coarse clock: a real reading");
        let set = before
            .checked_sub(Duration::from_millis(10))
            .unwrap_or(before);
        set_coarse(Some(set));
        assert_eq!(coarse(), set);
        assert_eq!(coarse_millis(), millis_at(set));
        // Another thread has its own (none).
        let elsewhere = std::thread::spawn(coarse).join().unwrap();
        assert!(elsewhere >= before);
        set_coarse(None);
        assert!(coarse() >= before);
    }

    #[test]
    fn a_deadline_beyond_the_clock_is_far_off_not_a_panic() {
        let now = tokio::time::Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let never = deadline(now, Duration::MAX);
        assert!(never >= now + Duration::from_secs(86_400 * 365));
    }
}
