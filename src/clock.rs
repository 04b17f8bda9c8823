//! Time as syncgate reads and shows it: a cheap monotonic millisecond clock for atomics,
//! deadlines that cannot overflow, and the one wall-clock format the admin API and the event
//! log use (RFC 3339, UTC, milliseconds).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// Far enough to be never, near enough to add to any `Instant` (tokio uses the same 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Milliseconds since the process-wide monotonic origin; a cheap clock for atomics.
pub fn now_millis() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // Offset by one so that 0 can mean "never".
    u64::try_from(origin.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
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

/// Whole seconds of [`now_millis`]: the retry budget's slot clock.
pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// `t` as RFC 3339, UTC, with milliseconds (`2026-01-02T03:04:05.678Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
