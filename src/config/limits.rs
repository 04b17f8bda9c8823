//! The ranges every config value must fall in, in one place: `check` and every reload refuse a
//! value outside them with a `file:line:col` error that names the range, so that no value that
//! passes can overflow a clock, exhaust memory or make a backend flap (issue 10, items 3, 4, 9).
//! The README lists them.
//!
//! Durations have a millisecond floor because the clocks that enforce them count milliseconds
//! ([`crate::clock::now_millis`]); their ceilings keep `now + duration` far from the end of
//! `Instant`'s range, and are anyway longer than any useful timeout.

use std::ops::RangeInclusive;
use std::time::Duration;

/// An inclusive range of durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurationRange {
    /// The shortest duration allowed (zero allowed only when this is zero).
    pub min: Duration,
    /// The longest duration allowed.
    pub max: Duration,
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// The longest duration any key accepts: 24 hours.
pub(crate) const MAX_DURATION: Duration = DAY;

/// Timeouts and windows (`header_read_timeout`, `request_timeout`, `drain_timeout`,
/// `idle_timeout`, `eject_window`, and any duration that must not be zero): 1 ms to 24 h.
pub(crate) const TIMEOUT: DurationRange = DurationRange {
    min: MS,
    max: MAX_DURATION,
};

/// Durations where zero turns a feature off (`slow_start`): 0 to 24 h.
pub(crate) const OPTIONAL: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: MAX_DURATION,
};

/// `probe.interval`: 10 ms to 1 h. The floor is the prober's own minimum pause between two
/// probes, so a shorter interval would not probe faster, only fail every probe whose timeout
/// follows it down (a `"1ns"` interval made backends flap); an hour is the longest a backend
/// may go unprobed, and the `Retry-After` of a `503` follows the interval.
pub(crate) const PROBE_INTERVAL: DurationRange = DurationRange {
    min: Duration::from_millis(10),
    max: HOUR,
};

/// `probe.timeout`: 1 ms to 1 h, and never more than the interval.
pub(crate) const PROBE_TIMEOUT: DurationRange = DurationRange { min: MS, max: HOUR };

/// `guard.retry_budget_window`: 1 s to 1 min; the budget counts whole seconds in a ring of 60.
pub(crate) const RETRY_BUDGET_WINDOW: DurationRange = DurationRange {
    min: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// `server.worker_threads` (0: one per core).
pub(crate) const WORKER_THREADS: RangeInclusive<i64> = 0..=1024;
/// `server.max_connections`: at least one, and far below tokio's semaphore limit
/// (`usize::MAX >> 3` permits, beyond which it panics).
pub(crate) const MAX_CONNECTIONS: RangeInclusive<i64> = 1..=1_000_000;
/// `server.max_request_body`: 1 B to 1 TiB (bodies this large stream; they are never held).
pub(crate) const MAX_REQUEST_BODY: RangeInclusive<u64> = 1..=1 << 40;
/// `pools.X.retries`: other backends tried after a connect failure.
pub(crate) const RETRIES: RangeInclusive<i64> = 0..=100;
/// `probe.rise` and `probe.fall`.
pub(crate) const RISE_FALL: RangeInclusive<i64> = 1..=1000;
/// `probe.max_generation_lag`: any generation distance a `u32` can count.
pub(crate) const MAX_GENERATION_LAG: RangeInclusive<i64> = 0..=u32::MAX as i64;
/// `guard.max_replay_body`: 0 B to 1 GiB (bodies up to this are held in memory per request).
pub(crate) const MAX_REPLAY_BODY: RangeInclusive<u64> = 0..=1 << 30;
/// `guard.eject_after`.
pub(crate) const EJECT_AFTER: RangeInclusive<i64> = 1..=1000;
/// `guard.consecutive_connect_failures` and `guard.consecutive_5xx` (0: off).
pub(crate) const CONSECUTIVE: RangeInclusive<i64> = 0..=1_000_000;
/// `guard.max_ejection_percent`.
pub(crate) const MAX_EJECTION_PERCENT: RangeInclusive<i64> = 0..=100;
/// `guard.retry_budget_min_per_sec`.
pub(crate) const RETRY_BUDGET_MIN_PER_SEC: RangeInclusive<i64> = 0..=1_000_000;
/// `backends.weight`.
pub(crate) const WEIGHT: RangeInclusive<i64> = 1..=1000;

/// The config file itself is read up to this size (16 MiB); a larger one is an error.
pub(crate) const MAX_CONFIG_BYTES: u64 = crate::files::MAX_CONFIG_BYTES;
/// Every file the config names (`token_file`, TLS `cert` and `key`, upstream `ca`) is read up
/// to this size (1 MiB), and must be a regular file.
pub(crate) const MAX_NAMED_FILE_BYTES: u64 = crate::files::MAX_NAMED_FILE_BYTES;

/// `check`, the logs and the admin API show at most this many errors of one file, then
/// `... and N more`.
pub const MAX_ERRORS_SHOWN: usize = 100;
