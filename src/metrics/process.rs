//! The process's own resource use, read from `/proc` at scrape time (no `unsafe`, no
//! sampling thread): CPU seconds, resident and virtual memory, open and allowed file
//! descriptors, start time. The names are the Prometheus client libraries' standard
//! `process_*` ones, so existing dashboards and alerts apply.
//!
//! Linux reports CPU time and the start time in clock ticks of `USER_HZ`, which the kernel
//! fixes at 100 for user space on every architecture it supports (the kernel's own `HZ` may
//! differ; `sysconf(_SC_CLK_TCK)` returns this constant).

use std::path::Path;

/// Clock ticks per second in `/proc/*/stat` (see the module's doc).
const USER_HZ: f64 = 100.0;

/// The process's resource use at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors (sockets included).
    pub open_fds: u64,
    /// The soft limit on open file descriptors, if it is not unlimited.
    pub max_fds: Option<u64>,
    /// When the process started, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Reads this process's figures; `None` where `/proc` is not there to read (not Linux, or a
/// sandbox without it): the metrics are then left out.
pub fn read() -> Option<Process> {
    let proc = Path::new("/proc");
    let stat = std::fs::read_to_string(proc.join("self/stat")).ok()?;
    let status = std::fs::read_to_string(proc.join("self/status")).ok()?;
    let system = std::fs::read_to_string(proc.join("stat")).ok()?;
    let limits = std::fs::read_to_string(proc.join("self/limits")).unwrap_or_default();
    let fields = parse_stat(&stat)?;
    let boot = boot_time(&system)?;
    let open_fds = std::fs::read_dir(proc.join("self/fd")).ok()?.count() as u64;
    Some(Process {
        cpu_seconds: (fields.utime + fields.stime) as f64 / USER_HZ,
        resident_bytes: resident_kib(&status)?.saturating_mul(1024),
        virtual_bytes: fields.vsize,
        // The directory listing itself holds one descriptor while it is read.
        open_fds: open_fds.saturating_sub(1),
        max_fds: max_open_files(&limits),
        start_time_seconds: boot as f64 + fields.starttime as f64 / USER_HZ,
    })
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
    })
}

/// `VmRSS` of `/proc/PID/status`, KiB.
fn resident_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `btime` of `/proc/stat`: boot time, seconds since the Unix epoch.
fn boot_time(system: &str) -> Option<u64> {
    let line = system.lines().find(|l| l.starts_with("btime "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/PID/limits` (`None` when unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (odd) name (x)) S 1 4242 4242 0 -1 4194560 1200 0 3 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 2345 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(StatFields {
                utime: 250,
                stime: 75,
                starttime: 123456,
                vsize: 987654321,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        assert_eq!(
            resident_kib("Name:\tsyncgate\nVmRSS:\t   10240 kB\nThreads:\t3\n"),
            Some(10240)
        );
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764000000\n"),
            Some(1_764_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
    }

    #[test]
    fn this_process_reads_sensibly() {
        let p = read().expect("/proc is readable on Linux");
        assert!(p.resident_bytes > 0);
        assert!(p.virtual_bytes >= p.resident_bytes);
        assert!(p.open_fds >= 3, "stdin, stdout and stderr at least");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0);
    }
}
