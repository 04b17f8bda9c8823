//! Time as syncgate reads and shows it: a cheap monotonic millisecond clock for atomics, and
//! the one wall-clock format the admin API and the event log use (RFC 3339, UTC, milliseconds).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Milliseconds since the process-wide monotonic origin; a cheap clock for atomics.
pub fn now_millis() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    // Offset by one so that 0 can mean "never".
    origin.elapsed().as_millis() as u64 + 1
}

/// Whole seconds of [`now_millis`]: the retry budget's slot clock.
pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// `t` as RFC 3339, UTC, with milliseconds (`2026-01-02T03:04:05.678Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
