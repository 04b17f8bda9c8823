//! Where access log lines go: formatted on the request's thread a few requests after they
//! end, handed over in batches of text, written by one writer thread.
//!
//! When a request's entry drops, its thread keeps the record; once it has [`FORMAT_EVERY`]
//! of them it formats their lines ([`format`](mod@format)) at the end of its own text buffer
//! (no lock), empties the records' boxes and keeps them for its next requests ([`spare`]).
//! It hands the buffer to the writer at [`FLUSH_LINES`] lines (or [`BATCH_BYTES`]), every
//! [`FLUSH_EVERY`] (the server's flush task, which formats what the thread holds first), and
//! when the thread ends. The hand-over is `try_send` on a channel of [`QUEUE`] batches: when
//! the writer falls behind (a slow disk, a blocked stderr pipe) the batch is dropped and its
//! lines counted (`syncgate_access_log_dropped_total`); a request never waits for the log.
//! The writer thread does every `write(2)` (one `writev(2)` per wake-up, no copy) and every
//! `open(2)`, and gives the emptied buffers back for the threads to fill again.
//!
//! Why the request's thread formats, and soon: a record read milliseconds later, by another
//! thread, is read from memory, not from a cache, and so is its box when it comes back to be
//! filled. Measured per logged request (per-thread CPU time, two builds side by side): a
//! writer thread that formatted the records spent 180–250 ns on each, 68 of them formatting
//! and the rest reading the record and handing its box back; formatted by the request's
//! thread as it ended, a line cost that thread about 240 ns (the formatting code fetched
//! anew for each line) and the writer 30–40 ns; formatted [`FORMAT_EVERY`] at a time, about
//! 90 ns less. Formatting the thread's batch of 64 records at once cost more than one at a
//! time (older records, colder). See docs/benchmarks.md, "The access log".
//!
//! A reload that changes the log (path, format, on/off) starts a new *epoch*. A thread
//! formats each line in the format of the epoch it ended in, never mixes epochs in one batch,
//! and the [`writer`](super::writer) keeps each previous destination for a second (up to
//! eight of them, for reloads faster than that), so that the lines of requests completed
//! before a reload, still in the threads' buffers, end in the file of their epoch in its
//! format, and the later ones in the new file in the new format. `SIGUSR1`
//! ([`AccessLog::reopen`]) reopens the file by its path (after logrotate renamed it).

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dest::{target_name, Dest};
use super::format::{self, Clock};
use super::record::Record;
use super::writer::{lock, Batch, Msg, Output, WriterState, KEPT_BYTES};
use crate::config::{AccessLogConfig, AccessLogFormat};

/// A thread hands its lines to the writer once it has this many ...
const FLUSH_LINES: u64 = 64;
/// ... or this many bytes of them (lines with long paths), whichever comes first; also the
/// room a thread's batch starts with (64 JSON lines of 300 bytes fit).
const BATCH_BYTES: usize = 32 * 1024;
/// ... and every this often, whatever it holds (the server's flush task).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The epoch of a thread that has not written a line of its log yet.
const NO_EPOCH: u64 = u64::MAX;
/// Batches waiting for the writer, at most (16,384 lines, about 2.5 MiB of text in 8 MiB of
/// buffers, 160 ms of lines at 100,000 requests/s): more are dropped and counted.
const QUEUE: usize = 256;
/// Emptied record boxes a thread keeps for its next requests, at most: as many as it has
/// requests in progress at once, up to this; more are freed.
const SPARE_BOXES: usize = 256;
/// A thread formats the lines of its ended requests this many at a time (and whatever it
/// holds at a reload or its flush). The code that formats a line, fetched anew between two
/// requests' worth of proxying, cost more than the formatting itself: one line at a time, a
/// line cost its thread about 240 ns, against 70 in a hot loop. Eight at a time, while the
/// eight records are still in cache, measured about 90 ns less a request against one at a
/// time (two builds side by side, both orders), and the log's cost, on against off, fell
/// from about 390 to 250 ns a request. Four measured about 50 ns worse than eight, sixteen
/// the same as eight, 64 worse than one at a time (records colder).
const FORMAT_EVERY: usize = 8;
/// Shutdown waits this long at most for the writer to write what is queued.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The access log of one running syncgate: what the proxy threads read per request (on/off,
/// format), the channel to the writer, and the counter of dropped lines. Lives in
/// [`crate::snapshot::Shared`]; idle (off, no thread) until [`AccessLog::start`].
#[derive(Debug)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Read once per request: the only access-log work a request does while the log is off.
    enabled: AtomicBool,
    /// The epoch (see the module's doc) of the lines written from now on, and their format,
    /// in one word ([`pack`]): a thread reads both at once.
    current: AtomicU64,
    tx: SyncSender<Msg>,
    /// The writer's end, until [`AccessLog::start`] gives it to the writer thread.
    rx: Mutex<Option<Receiver<Msg>>>,
    state: Arc<WriterState>,
    /// The config applied last: a reload that leaves it unchanged changes nothing.
    applied: Mutex<Option<AccessLogConfig>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The epoch and format of [`Inner::current`] in one word.
fn pack(epoch: u64, format: AccessLogFormat) -> u64 {
    let bit = match format {
        AccessLogFormat::Text => 0,
        AccessLogFormat::Json => 1,
    };
    epoch << 1 | bit
}

fn unpack(word: u64) -> (u64, AccessLogFormat) {
    let format = if word & 1 == 1 {
        AccessLogFormat::Json
    } else {
        AccessLogFormat::Text
    };
    (word >> 1, format)
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The file could not be opened for append.
    #[error("cannot open the access log {path}: {source}")]
    Open {
        /// The configured path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the access log writer: {0}")]
    Thread(io::Error),
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::with_queue(QUEUE)
    }
}

impl AccessLog {
    /// An access log whose writer takes `queue` batches at most.
    fn with_queue(queue: usize) -> AccessLog {
        let (tx, rx) = mpsc::sync_channel(queue);
        AccessLog {
            inner: Arc::new(Inner {
                enabled: AtomicBool::new(false),
                current: AtomicU64::new(0),
                tx,
                rx: Mutex::new(Some(rx)),
                state: Arc::default(),
                applied: Mutex::new(None),
                writer: Mutex::new(None),
            }),
        }
    }

    /// Opens the destination of `config` (when enabled) and starts the writer thread. An
    /// error leaves the log off.
    pub fn start(&self, config: &AccessLogConfig) -> Result<(), AccessLogError> {
        let Some(rx) = lock(&self.inner.rx).take() else {
            return Ok(());
        };
        let wanted = config.enabled.then(|| config.target.clone());
        let dest = match &wanted {
            Some(target) => Some(Dest::open(target).map_err(|source| AccessLogError::Open {
                path: target_name(target),
                source,
            })?),
            None => None,
        };
        let mut output = Output::new(wanted, dest);
        let state = self.inner.state.clone();
        let handle = std::thread::Builder::new()
            .name("syncgate-access-log".into())
            .spawn(move || output.run(&rx, &state))
            .map_err(AccessLogError::Thread)?;
        *lock(&self.inner.writer) = Some(handle);
        *lock(&self.inner.applied) = Some(config.clone());
        self.publish(1, config);
        Ok(())
    }

    /// Applies a reloaded `config`: nothing when it is unchanged; else a new epoch, whose
    /// lines the writer sends to the new destination (the old file is closed once the lines
    /// of requests that ended before have reached it).
    pub fn configure(&self, config: &AccessLogConfig) {
        let mut applied = lock(&self.inner.applied);
        let Some(before) = applied.as_ref() else {
            // Not started: nothing runs that could use it.
            return;
        };
        if before == config {
            return;
        }
        let (epoch, _) = unpack(self.inner.current.load(Ordering::Acquire));
        let epoch = epoch + 1;
        // The writer learns of the switch before any thread can write a line of the new epoch.
        lock(&self.inner.state.pending)
            .switches
            .push((epoch, config.enabled.then(|| config.target.clone())));
        self.publish(epoch, config);
        *applied = Some(config.clone());
        self.wake();
    }

    /// Reopens the file by its path (`SIGUSR1`, after logrotate renamed it); also retries a
    /// file that a reload could not open. Nothing for stderr.
    pub fn reopen(&self) {
        lock(&self.inner.state.pending).reopen = true;
        self.wake();
    }

    /// Writes what the threads handed over, closes the file and ends the writer (waiting
    /// [`CLOSE_WAIT`] at most). Call once the proxy threads have ended: each hands its last
    /// lines over as it ends.
    pub async fn close(&self) {
        lock(&self.inner.state.pending).closing = true;
        self.inner.enabled.store(false, Ordering::Release);
        self.wake();
        let Some(writer) = lock(&self.inner.writer).take() else {
            return;
        };
        let joined = tokio::task::spawn_blocking(move || writer.join());
        if tokio::time::timeout(CLOSE_WAIT, joined).await.is_err() {
            tracing::warn!(waited = ?CLOSE_WAIT, "the access log writer did not finish; lines still queued are lost");
        }
    }

    /// Whether requests are logged now. One atomic load: what a request pays when the log is
    /// off.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Lines dropped since start: the writer fell behind, a write failed, or the log was on
    /// with no file open (a reload named one that could not be opened).
    pub fn dropped(&self) -> u64 {
        self.inner.state.dropped.load(Ordering::Relaxed)
    }

    /// Makes this log the calling thread's (a proxy thread's) until the returned guard drops,
    /// which hands the thread's last lines over.
    pub fn bind_thread(&self) -> ThreadGuard {
        let _ = THREAD.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.flush();
                t.log = Some(self.inner.clone());
                // No epoch: the first line reads this log's epoch and format (another log's
                // epoch may have the same number and another format).
                t.epoch = NO_EPOCH;
            }
        });
        ThreadGuard {
            _not_send: std::marker::PhantomData,
        }
    }

    fn publish(&self, epoch: u64, config: &AccessLogConfig) {
        self.inner
            .current
            .store(pack(epoch, config.format), Ordering::Release);
        self.inner.enabled.store(config.enabled, Ordering::Release);
    }

    fn wake(&self) {
        // A full queue means a busy writer, which looks at `Pending` after its current batch.
        let _ = self.inner.tx.try_send(Msg::Wake);
    }
}

/// Keeps a proxy thread's access log bound; dropping it hands the thread's last lines over.
#[derive(Debug)]
pub struct ThreadGuard {
    /// Bound to the thread it was made on.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        let _ = THREAD.try_with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.flush();
                t.log = None;
                t.epoch = NO_EPOCH;
            }
        });
    }
}

thread_local! {
    static THREAD: RefCell<ThreadBuf> = const {
        RefCell::new(ThreadBuf {
            log: None,
            text: Vec::new(),
            lines: 0,
            epoch: NO_EPOCH,
            format: AccessLogFormat::Text,
            clock: Clock::new(),
            anchor: None,
            spare: Vec::new(),
            ended: Vec::new(),
        })
    };
}

/// A proxy thread's ended requests not formatted yet, its lines not handed over yet, and the
/// boxes it keeps for its next requests.
struct ThreadBuf {
    log: Option<Arc<Inner>>,
    /// Lines of `epoch`, formatted, not handed over yet; `lines` of them.
    text: Vec<u8>,
    lines: u64,
    epoch: u64,
    /// The format of `epoch`.
    format: AccessLogFormat,
    clock: Clock,
    /// A monotonic instant and the wall-clock time (since the Unix epoch) read with it: see
    /// [`wall_time`].
    anchor: Option<(Instant, Duration)>,
    /// Emptied boxes of ended requests, to be filled again (last in, first out: the one taken
    /// is the likeliest to be in cache).
    #[allow(
        clippy::vec_box,
        reason = "the boxes themselves are kept: a request's entry is a box, filled in place"
    )]
    spare: Vec<Box<Record>>,
    /// Records of ended requests, their lines not formatted yet: fewer than [`FORMAT_EVERY`]
    /// between two calls, all of `epoch`.
    #[allow(
        clippy::vec_box,
        reason = "the boxes themselves are kept, to be filled again once formatted"
    )]
    ended: Vec<Box<Record>>,
}

impl ThreadBuf {
    /// Takes an ended request's record, to be formatted with the next ones (its box then
    /// kept for the thread's next request). A record is formatted in the format of the epoch
    /// it ended in: those of an earlier epoch are formatted, and handed over, before it.
    fn push(&mut self, record: Box<Record>) {
        let Some(log) = self.log.as_deref() else {
            return;
        };
        let (epoch, format) = unpack(log.current.load(Ordering::Acquire));
        if self.epoch != epoch {
            self.switch(epoch, format);
        }
        self.ended.push(record);
        if self.ended.len() >= FORMAT_EVERY {
            self.format_ended();
        }
    }

    /// Formats and hands over the lines of the epoch before, then takes up `epoch`.
    #[cold]
    fn switch(&mut self, epoch: u64, format: AccessLogFormat) {
        self.format_ended();
        self.hand_over();
        self.epoch = epoch;
        self.format = format;
    }

    /// Formats the ended records' lines at the end of the thread's text (a few at once: see
    /// [`FORMAT_EVERY`]), lets go of what they held, and keeps their boxes for the thread's
    /// next requests.
    ///
    /// Out of line: formatting is a few kilobytes of code, kept apart from the request path's
    /// own (inlined into the entry's drop, it made that a 10-KiB function).
    #[inline(never)]
    fn format_ended(&mut self) {
        let Some(log) = self.log.as_deref() else {
            return;
        };
        for mut record in self.ended.drain(..) {
            // Taken when a line needs it, not after a hand-over: a thread that goes idle
            // then holds no buffer.
            room(log, &mut self.text);
            let at = record.done.unwrap_or(record.started);
            let time = wall_time(anchor(&mut self.anchor, at), at);
            format::write(
                &mut self.text,
                self.format,
                &record.line(time),
                &mut self.clock,
            );
            self.lines += 1;
            record.release();
            if self.spare.len() < SPARE_BOXES {
                self.spare.push(record);
            }
            if self.lines >= FLUSH_LINES || self.text.len() >= BATCH_BYTES {
                hand_over(log, &mut self.text, &mut self.lines, self.epoch);
            }
        }
    }

    /// Hands the thread's formatted lines to the writer.
    fn hand_over(&mut self) {
        if let Some(log) = self.log.as_deref() {
            hand_over(log, &mut self.text, &mut self.lines, self.epoch);
        }
    }

    /// Formats and hands over everything the thread holds.
    fn flush(&mut self) {
        self.format_ended();
        self.hand_over();
        if let Some(log) = self.log.as_deref() {
            if !log.enabled.load(Ordering::Relaxed) {
                // Off: no request takes a box or writes a line until it is on again.
                self.spare = Vec::new();
                self.text = Vec::new();
            }
        }
    }
}

/// Gives an empty `text` room for a batch: a buffer the writer gave back, else a new one.
fn room(log: &Inner, text: &mut Vec<u8>) {
    if text.capacity() == 0 {
        *text = lock(&log.state.given_back)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES));
    }
}

/// Sends the `lines` of `text` (of `epoch`) to the writer, or drops and counts them when its
/// queue is full.
fn hand_over(log: &Inner, text: &mut Vec<u8>, lines: &mut u64, epoch: u64) {
    if *lines == 0 {
        return;
    }
    let batch = Batch {
        text: std::mem::take(text),
        lines: std::mem::take(lines),
        epoch,
    };
    if let Err(TrySendError::Full(msg) | TrySendError::Disconnected(msg)) =
        log.tx.try_send(Msg::Lines(batch))
    {
        if let Msg::Lines(lost) = msg {
            log.state.dropped.fetch_add(lost.lines, Ordering::Relaxed);
            // Its room holds the next lines, unless a long line made it large.
            if lost.text.capacity() <= KEPT_BYTES {
                *text = lost.text;
                text.clear();
            }
        }
    }
}

/// A box for a request's record, when the calling thread has one to reuse.
pub(super) fn spare() -> Option<Box<Record>> {
    THREAD
        .try_with(|t| t.try_borrow_mut().ok().and_then(|mut t| t.spare.pop()))
        .ok()
        .flatten()
}

/// Keeps an ended request's record on the calling thread, to be formatted into its batch with
/// the next ones ([`FORMAT_EVERY`]), its box then kept for the thread's next request; on a
/// thread without a log the record is let go.
pub(super) fn emit(record: Box<Record>) {
    let _ = THREAD.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.push(record);
        }
    });
}

/// Formats the lines of the calling thread's ended requests and hands them to the writer (the
/// server calls it every [`FLUSH_EVERY`]).
pub fn flush_thread() {
    let _ = THREAD.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.flush();
        }
    });
}

/// How long one reading of the wall clock dates lines (see [`wall_time`]).
const ANCHOR_FOR: Duration = Duration::from_secs(1);

/// `anchor`, read again when `at` is [`ANCHOR_FOR`] past it: a step of the wall clock (NTP,
/// an operator) shows in the lines within a second. `at` (a line's time, a reading of the
/// clock a moment ago) stands for now: no clock reading per line.
fn anchor(anchor: &mut Option<(Instant, Duration)>, at: Instant) -> (Instant, Duration) {
    match *anchor {
        Some(a) if at.saturating_duration_since(a.0) < ANCHOR_FOR => a,
        _ => {
            let now = Instant::now();
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            *anchor = Some((now, wall));
            (now, wall)
        }
    }
}

/// The wall-clock time of `at`, since the Unix epoch: the anchor's, moved by the monotonic
/// time between them. No clock reading per line.
fn wall_time((instant, wall): (Instant, Duration), at: Instant) -> Duration {
    match at.checked_duration_since(instant) {
        Some(after) => wall.saturating_add(after),
        None => wall.saturating_sub(instant.saturating_duration_since(at)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::record;
    use super::*;
    use crate::config::AccessLogTarget;

    fn config(target: AccessLogTarget, format: AccessLogFormat) -> AccessLogConfig {
        AccessLogConfig {
            enabled: true,
            target,
            format,
        }
    }

    /// A log that is on (text, epoch 1) with a queue of `queue` batches and no writer: what
    /// the threads hand over stays queued, or is dropped and counted once the queue is full.
    fn on_without_a_writer(queue: usize) -> AccessLog {
        let log = AccessLog::with_queue(queue);
        log.inner.enabled.store(true, Ordering::Release);
        log.inner
            .current
            .store(pack(1, AccessLogFormat::Text), Ordering::Release);
        log
    }

    /// Runs `f` on a thread of its own (thread-local buffers), bound to `log`.
    fn on_a_thread(log: &AccessLog, f: impl FnOnce() + Send + 'static) {
        let inner = log.inner.clone();
        std::thread::spawn(move || {
            let _bound = AccessLog { inner }.bind_thread();
            f();
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_writer_that_cannot_keep_up_costs_lines_counted_never_a_wait() {
        // One batch fits in the queue, and nothing takes it: a writer stuck in `write(2)`.
        let log = on_without_a_writer(1);
        on_a_thread(&log, || {
            for _ in 0..100 {
                emit(record::sample());
                flush_thread();
            }
        });
        // The first batch waits in the queue; the 99 after it found the queue full. Each
        // `try_send` returned at once: this test would hang otherwise.
        assert_eq!(log.dropped(), 99);
    }

    #[test]
    fn a_thread_hands_its_lines_over_at_batch_bytes_before_it_has_flush_lines() {
        // One batch fits in the queue, and nothing takes it: what is handed over later is
        // dropped and counted, which tells a hand-over from lines kept by the thread.
        let log = on_without_a_writer(1);
        // Lines of 3,000 to 3,200 bytes: the eleventh reaches BATCH_BYTES.
        let long = http::Uri::try_from(format!("/{}", "p".repeat(3000))).expect("uri");
        on_a_thread(&log, move || {
            for _ in 0..20 {
                let mut r = record::sample();
                r.release();
                r.refill(
                    Instant::now(),
                    "127.0.0.1:1".parse().expect("addr"),
                    &http::Method::GET,
                    &long,
                    http::Version::HTTP_11,
                );
                emit(r);
            }
        });
        // The first batch (the eleven lines reaching BATCH_BYTES, handed over at the line
        // that reached it, not at the end of its group of FORMAT_EVERY) is queued, what came
        // after is dropped. Counted by lines alone, all 20 would be one batch, queued.
        assert_eq!(log.dropped(), 20 - 11);
    }

    #[test]
    fn a_thread_keeps_spare_boxes_up_to_its_bound() {
        let log = on_without_a_writer(QUEUE);
        on_a_thread(&log, || {
            for _ in 0..SPARE_BOXES + 10 {
                emit(record::sample());
            }
            let mut kept = 0;
            while spare().is_some() {
                kept += 1;
            }
            assert_eq!(kept, SPARE_BOXES);
        });
    }

    /// Shuts `log` down as the server does: what was handed over is written, the file closed.
    fn close(log: &AccessLog) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(log.close());
    }

    #[test]
    fn lines_reach_the_file_at_shutdown_and_a_reopen_follows_a_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let log = AccessLog::default();
        log.start(&config(
            AccessLogTarget::File(path.clone()),
            AccessLogFormat::Text,
        ))
        .expect("starts");
        on_a_thread(&log, || emit(record::sample()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&path)
            .unwrap_or_default()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "the first line was not written");
            std::thread::sleep(Duration::from_millis(10));
        }
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        log.reopen();
        let wait_for_new_file = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            assert!(Instant::now() < wait_for_new_file, "not reopened");
            std::thread::sleep(Duration::from_millis(10));
        }
        on_a_thread(&log, || {
            emit(record::sample());
            emit(record::sample());
        });
        close(&log);
        let count = |p: &Path| std::fs::read_to_string(p).expect("read").lines().count();
        assert_eq!(count(&rotated), 1, "the renamed file keeps what it had");
        assert_eq!(
            count(&path),
            2,
            "written to the new file, all of it by shutdown"
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn lines_of_before_each_reload_stay_in_the_file_and_format_of_their_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<_> = ["a.log", "b.log", "c.log"]
            .iter()
            .map(|f| dir.path().join(f))
            .collect();
        let formats = [
            AccessLogFormat::Text,
            AccessLogFormat::Json,
            AccessLogFormat::Text,
        ];
        let log = AccessLog::default();
        log.start(&config(AccessLogTarget::File(files[0].clone()), formats[0]))
            .expect("starts");
        let (inner, paths) = (log.inner.clone(), files.clone());
        std::thread::spawn(move || {
            let log = AccessLog { inner };
            let _bound = log.bind_thread();
            // Two reloads, each with a line of the epoch before ended and not formatted yet:
            // it is written in the format of the epoch it ended in, to that epoch's file.
            // The writer may take the reloads one by one or both at once (that case alone:
            // the writer's own tests).
            emit(record::sample());
            for (path, format) in paths.iter().zip(formats).skip(1) {
                log.configure(&config(AccessLogTarget::File(path.clone()), format));
                emit(record::sample());
            }
        })
        .join()
        .expect("thread");
        close(&log);
        for (path, format) in files.iter().zip(formats) {
            let text = std::fs::read_to_string(path).expect("read");
            assert_eq!(text.lines().count(), 1, "{}: {text}", path.display());
            assert_eq!(
                text.starts_with("{\"time\""),
                format == AccessLogFormat::Json,
                "{}: {text}",
                path.display()
            );
        }
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn an_ended_requests_box_is_kept_by_its_thread_holding_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let log = AccessLog::default();
        log.start(&config(
            AccessLogTarget::File(path.clone()),
            AccessLogFormat::Text,
        ))
        .expect("starts");
        // A backend whose names are too long to copy: the record holds it until formatted.
        let backend = Arc::new(crate::backend::Backend::new(
            &"p".repeat(60),
            &"b".repeat(20),
            "127.0.0.1:9".parse().expect("addr"),
            1,
        ));
        let (inner, held) = (log.inner.clone(), backend.clone());
        std::thread::spawn(move || {
            let _bound = AccessLog { inner }.bind_thread();
            let answered = || {
                let mut r = record::sample();
                r.answered(&held, Duration::from_millis(1));
                r
            };
            for _ in 1..FORMAT_EVERY {
                emit(answered());
            }
            // Not formatted yet: each record holds the backend, and no box is free.
            assert_eq!(Arc::strong_count(&held), 2 + FORMAT_EVERY - 1);
            assert!(
                spare().is_none(),
                "a record waiting to be formatted keeps its box"
            );
            emit(answered());
            // Formatted into the thread's batch: the records hold nothing any more (this
            // thread's handle and the test's), and their boxes wait for the next requests.
            assert_eq!(Arc::strong_count(&held), 2, "written records hold nothing");
            for _ in 0..FORMAT_EVERY {
                assert!(spare().is_some(), "every box is kept");
            }
            assert!(spare().is_none());
            // Fewer than FORMAT_EVERY: formatted by the thread's flush.
            for _ in 0..3 {
                emit(answered());
            }
            assert_eq!(Arc::strong_count(&held), 5);
            flush_thread();
            assert_eq!(Arc::strong_count(&held), 2, "flushed records hold nothing");
        })
        .join()
        .expect("thread");
        close(&log);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), FORMAT_EVERY + 3, "{text}");
        assert!(
            text.contains(&format!("backend={}", "b".repeat(20))),
            "{text}"
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn turning_the_log_off_writes_what_threads_hold_and_frees_their_boxes_and_buffers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let on = config(AccessLogTarget::File(path.clone()), AccessLogFormat::Text);
        let log = AccessLog::default();
        log.start(&on).expect("starts");
        let inner = log.inner.clone();
        std::thread::spawn(move || {
            let log = AccessLog { inner };
            let _bound = log.bind_thread();
            // Two full batches, handed over: their buffers come back to be filled again (the
            // second batch may take the first's). Three more requests end, their lines not
            // formatted yet when the log is turned off.
            for _ in 0..2 * FLUSH_LINES + 3 {
                emit(record::sample());
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while lock(&log.inner.state.given_back).is_empty() {
                assert!(Instant::now() < deadline, "the buffer was not given back");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(spare().is_some(), "a box kept while the log is on");
            log.configure(&AccessLogConfig {
                enabled: false,
                ..on
            });
            // No request of the thread logs again; its flush task formats what it holds.
            flush_thread();
            assert!(spare().is_none(), "the thread's boxes are freed once off");
            let held = THREAD.with(|t| t.borrow().text.capacity());
            assert_eq!(held, 0, "the thread's buffer is freed once off");
            // The writer applies the switch, freeing the buffers it kept (nothing else takes
            // them now).
            while !lock(&log.inner.state.pending).switches.is_empty()
                || !lock(&log.inner.state.given_back).is_empty()
            {
                assert!(Instant::now() < deadline, "the spare buffers were kept");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
        .join()
        .expect("thread");
        close(&log);
        assert!(lock(&log.inner.state.given_back).is_empty());
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2 * FLUSH_LINES as usize + 3);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_thread_bound_to_another_log_writes_in_that_logs_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        let (json, text) = (AccessLog::default(), AccessLog::default());
        json.start(&config(
            AccessLogTarget::File(a.clone()),
            AccessLogFormat::Json,
        ))
        .expect("starts");
        text.start(&config(
            AccessLogTarget::File(b.clone()),
            AccessLogFormat::Text,
        ))
        .expect("starts");
        let (first, second) = (json.inner.clone(), text.inner.clone());
        std::thread::spawn(move || {
            // Both logs are at their first epoch: the number alone does not tell them apart.
            let _first = AccessLog { inner: first }.bind_thread();
            for _ in 0..3 {
                emit(record::sample());
            }
            // Bound again, the first guard still held: the records not formatted yet are
            // formatted for the first log, before the thread takes up the second.
            let _second = AccessLog { inner: second }.bind_thread();
            emit(record::sample());
        })
        .join()
        .expect("thread");
        close(&json);
        close(&text);
        let (a, b) = (
            std::fs::read_to_string(&a).expect("a"),
            std::fs::read_to_string(&b).expect("b"),
        );
        assert!(a.starts_with("{\"time\"") && a.lines().count() == 3, "{a}");
        assert!(
            b.contains("\"GET / HTTP/1.1\"") && b.lines().count() == 1,
            "{b}"
        );
    }

    #[test]
    fn an_unchanged_config_changes_nothing_and_a_changed_one_starts_an_epoch() {
        let log = AccessLog::default();
        let cfg = AccessLogConfig {
            enabled: false,
            target: AccessLogTarget::Stderr,
            format: AccessLogFormat::Text,
        };
        log.start(&cfg).expect("starts");
        assert!(!log.is_enabled());
        let current = || unpack(log.inner.current.load(Ordering::Acquire));
        let (epoch, _) = current();
        log.configure(&cfg);
        assert_eq!(current(), (epoch, AccessLogFormat::Text));
        log.configure(&AccessLogConfig {
            enabled: true,
            format: AccessLogFormat::Json,
            ..cfg
        });
        assert!(log.is_enabled());
        assert_eq!(current(), (epoch + 1, AccessLogFormat::Json));
    }
}
