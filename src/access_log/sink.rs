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
//! 100 ns less. Formatting the thread's batch of 64 records at once cost more than one at a
//! time (older records, colder). See docs/benchmarks.md, "The access log".
//!
//! A reload that changes the log (path, format, on/off) starts a new *epoch*. A thread
//! formats each line in the format of the epoch it ended in, never mixes epochs in one batch,
//! and the writer keeps each previous destination for [`GRACE`] (up to [`RETIRED`] of them,
//! for reloads faster than that), so that the lines of requests completed before a reload,
//! still in the threads' buffers, end in the file of their epoch in its format, and the later
//! ones in the new file in the new format. `SIGUSR1`
//! ([`AccessLog::reopen`]) reopens the file by its path (after logrotate renamed it).

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dest::{target_name, Dest};
use super::format::{self, Clock};
use super::record::Record;
use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

/// A thread hands its lines to the writer once it has this many ...
const FLUSH_LINES: u64 = 64;
/// ... or this many bytes of them (lines with long paths), whichever comes first; also the
/// room a thread's batch starts with (64 JSON lines of 300 bytes fit).
const BATCH_BYTES: usize = 32 * 1024;
/// ... and every this often, whatever it holds (the server's flush task).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// The largest batch buffer kept for reuse (one long line may take a batch past
/// [`BATCH_BYTES`]): a larger one is freed once written.
const KEPT_BYTES: usize = 64 * 1024;
/// The epoch of a thread that has not written a line of its log yet.
const NO_EPOCH: u64 = u64::MAX;
/// Emptied batch buffers the writer keeps for the threads to fill again, at most (4 MiB of
/// 32-KiB buffers, 8 MiB at worst): a tick's batches at 300,000 requests/s. More are
/// freed, and all of them when the log is turned off.
const GIVEN_BACK: usize = 128;
/// Batches waiting for the writer, at most (16,384 lines, about 2.5 MiB of text in 8 MiB of
/// buffers, 160 ms of lines at 100,000 requests/s): more are dropped and counted.
const QUEUE: usize = 256;
/// Emptied record boxes a thread keeps for its next requests, at most: as many as it has
/// requests in progress at once, up to this; more are freed.
const SPARE_BOXES: usize = 256;
/// A thread formats the lines of its ended requests this many at a time (and whatever it
/// holds at a hand-over, a reload or its flush). The code that formats a line, fetched anew
/// between two requests' worth of proxying, cost more than the formatting itself: one line
/// at a time, a line cost its thread about 240 ns, against 70 in a hot loop. Eight at a
/// time cost 90–140 ns less a line, and the eight records are still in cache; 4 measured
/// about 50 ns worse than 8, 16 the same as 8, 64 worse than one at a time (records
/// colder).
const FORMAT_EVERY: usize = 8;
/// While batches keep coming, the writer takes them this often (see [`Output::run`]). Each
/// wake-up costs the core it shares with a proxy thread two context switches: measured per
/// logged request at 60,000 requests/s, the writer spent 82 ns every 10 ms and 35 every
/// 25 ms; every 50 ms it spent 19, but the proxy thread about 230 more (the buffers it fills
/// came back colder).
const WRITER_TICK: Duration = Duration::from_millis(25);
/// The writer writes the lines it took when it has taken everything queued, or before
/// it adds a batch to lines that reached this size. 64 KiB, a pipe's buffer on Linux: a write
/// to stderr piped to journald or a container runtime is taken whole when the pipe has room,
/// and holds the lock on stderr (which syncgate's own log lines take too) for about one
/// pipe's worth. At 64,000 requests/s a wake-up's lines are about that size.
const FLUSH_BYTES: usize = 64 * 1024;
/// After a reload changed the destination, the old one stays open this long for the lines
/// of requests that ended before the reload (threads hand theirs over within [`FLUSH_EVERY`]).
const GRACE: Duration = Duration::from_secs(1);
/// Destinations kept for their lines after a switch, at most: as many reloads within
/// [`GRACE`] that each change the log. Beyond, the oldest one's lines go where the next
/// epoch's go.
const RETIRED: usize = 8;
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

/// What the control plane tells the writer, and what both count.
#[derive(Debug, Default)]
struct WriterState {
    pending: Mutex<Pending>,
    /// Lines lost: the queue was full, or a write failed.
    dropped: AtomicU64,
    /// Emptied batch buffers, for the threads to fill again; at most [`GIVEN_BACK`].
    given_back: Mutex<Vec<Vec<u8>>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Switch to each destination (None: the log is off) from its epoch on, in order: two
    /// reloads may come within one of the writer's ticks.
    switches: Vec<(u64, Option<AccessLogTarget>)>,
    /// Reopen the file by its path.
    reopen: bool,
    /// Write what is queued and end.
    closing: bool,
}

#[derive(Debug)]
enum Msg {
    Lines(Batch),
    /// Look at [`Pending`].
    Wake,
}

/// Lines handed to the writer: `lines` of them, formatted, all of `epoch`.
#[derive(Debug)]
struct Batch {
    text: Vec<u8>,
    lines: u64,
    epoch: u64,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Lines dropped since start: the writer fell behind, or a write failed.
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

/// A proxy thread's lines not handed over yet, and the boxes it keeps for its next requests.
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
        if self.ended.is_empty() {
            return;
        }
        if self.text.capacity() == 0 {
            self.text = lock(&log.state.given_back)
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES));
        }
        for mut record in self.ended.drain(..) {
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
        }
        if self.lines >= FLUSH_LINES || self.text.len() >= BATCH_BYTES {
            hand_over(log, &mut self.text, &mut self.lines, self.epoch);
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

/// Writes an ended request's line into the calling thread's batch and keeps its box for the
/// thread's next request; on a thread without a log the record is let go.
pub(super) fn emit(record: Box<Record>) {
    let _ = THREAD.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.push(record);
        }
    });
}

/// Hands the calling thread's lines to the writer (the server calls it every
/// [`FLUSH_EVERY`]).
pub fn flush_thread() {
    let _ = THREAD.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.flush();
        }
    });
}

/// The writer thread's state.
struct Output {
    /// The newest epoch the writer knows of.
    epoch: u64,
    /// The destination the config names (None: the log is off).
    wanted: Option<AccessLogTarget>,
    /// What `dest` is: `wanted`, unless opening it failed.
    open: Option<AccessLogTarget>,
    dest: Option<Dest>,
    /// Where older epochs' lines still go for a moment after their switches, oldest first; at
    /// most [`RETIRED`].
    retired: Vec<Retired>,
    /// The last write failed (logged once, until one succeeds again).
    failing: bool,
    /// Lines not yet written: the buffers of the batches one wake-up took, written together
    /// (no copy) and then given back to the threads.
    texts: Vec<Vec<u8>>,
    /// How many bytes `texts` holds.
    bytes: usize,
    /// How many lines `texts` holds (counted as dropped if their write fails), and where
    /// they go ([`Output::route`]).
    pending: Option<(u64, u64)>,
}

/// A destination lines no longer go to, kept for [`GRACE`] for the lines of the epochs that
/// wrote there.
struct Retired {
    /// The epoch that switched away from it: lines of the epochs before this one (and since
    /// the switch before) go here.
    before: u64,
    /// None: the switch left the destination as it was (it changed only the format, or the
    /// new destination could not be opened).
    dest: Option<Dest>,
    until: Instant,
}

impl Output {
    /// The writer of epoch 1, writing to `dest` (which `wanted` names; None: the log is off).
    fn new(wanted: Option<AccessLogTarget>, dest: Option<Dest>) -> Output {
        Output {
            epoch: 1,
            open: wanted.clone(),
            wanted,
            dest,
            retired: Vec::new(),
            failing: false,
            texts: Vec::new(),
            bytes: 0,
            pending: None,
        }
    }

    /// Writes batches until closed. While batches keep coming it takes what the queue holds
    /// every [`WRITER_TICK`], so that senders never have to wake it (a wake-up is a futex call
    /// and, on a busy core, two context switches per batch); it blocks, to be woken by the
    /// next batch, only once a look found the queue empty.
    fn run(&mut self, rx: &Receiver<Msg>, state: &WriterState) {
        let mut busy = false;
        loop {
            let first = if busy {
                std::thread::sleep(WRITER_TICK);
                None
            } else {
                let waited = match self.retired.first().map(|r| r.until) {
                    Some(until) => rx
                        .recv_timeout(until.saturating_duration_since(Instant::now()))
                        .map_err(|e| e == RecvTimeoutError::Disconnected),
                    None => rx.recv().map_err(|_| true),
                };
                match waited {
                    Ok(msg) => Some(msg),
                    Err(false) => None,
                    Err(true) => return,
                }
            };
            let mut closing = self.apply(state);
            let mut taken = 0u32;
            let mut msg = first;
            loop {
                if let Some(Msg::Lines(batch)) = msg.take() {
                    taken += 1;
                    // Sent after its switch was asked for, which may have come after `apply`:
                    // the lines taken so far go where they were meant to before it.
                    if batch.epoch > self.epoch {
                        self.flush(state);
                        closing |= self.apply(state);
                    }
                    self.take(batch, state);
                }
                match rx.try_recv() {
                    Ok(next) => msg = Some(next),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush(state);
                        return;
                    }
                }
            }
            self.flush(state);
            busy = taken > 0;
            let now = Instant::now();
            self.retired.retain(|r| now < r.until);
            if closing {
                return;
            }
        }
    }

    /// Applies what the control plane asked for; whether to end.
    fn apply(&mut self, state: &WriterState) -> bool {
        let (switches, reopen, closing) = {
            let mut p = lock(&state.pending);
            (
                std::mem::take(&mut p.switches),
                std::mem::take(&mut p.reopen),
                p.closing,
            )
        };
        let switched = !switches.is_empty();
        for (epoch, target) in switches {
            self.switch(epoch, target);
        }
        if switched && self.wanted.is_none() {
            // Off: the spare buffers (up to 4 MiB) are not needed until it is on again.
            // Freed after the lock is let go: a thread may wait for it.
            let spare = std::mem::take(&mut *lock(&state.given_back));
            drop(spare);
        }
        if reopen {
            self.reopen();
        }
        closing
    }

    fn switch(&mut self, epoch: u64, target: Option<AccessLogTarget>) {
        self.epoch = epoch;
        self.wanted = target;
        let mut retired = Retired {
            before: epoch,
            dest: None,
            until: Instant::now() + GRACE,
        };
        if self.wanted != self.open {
            match self.wanted.as_ref().map(Dest::open).transpose() {
                Ok(dest) => {
                    retired.dest = std::mem::replace(&mut self.dest, dest);
                    self.open = self.wanted.clone();
                    match &self.open {
                        Some(target) => {
                            tracing::info!(
                                path = target_name(target),
                                "access log now written here"
                            )
                        }
                        None => tracing::info!("access log off"),
                    }
                }
                Err(e) => {
                    let path = self.wanted.as_ref().map(target_name).unwrap_or_default();
                    tracing::error!(path, error = %e, "cannot open the new access log; lines keep going to the old one (SIGUSR1 tries again)");
                }
            }
        }
        if self.retired.len() >= RETIRED {
            // Its lines go where the next epochs' go.
            self.retired.remove(0);
        }
        self.retired.push(retired);
    }

    fn reopen(&mut self) {
        let Some(target @ AccessLogTarget::File(_)) = self.wanted.clone() else {
            return;
        };
        match Dest::open(&target) {
            Ok(dest) => {
                // The old file (renamed by logrotate) is closed here.
                self.dest = Some(dest);
                self.open = Some(target.clone());
                tracing::info!(path = target_name(&target), "access log reopened");
            }
            Err(e) => {
                tracing::error!(path = target_name(&target), error = %e, "cannot reopen the access log; lines keep going to the file open before");
            }
        }
    }

    /// Where the lines of `epoch` go: the destination it wrote to, while that is kept after
    /// a switch (the `before` of its [`Retired`]), else the current one ([`NO_EPOCH`]).
    fn route(&self, epoch: u64) -> u64 {
        self.retired
            .iter()
            .find(|r| epoch < r.before && r.dest.is_some())
            .map_or(NO_EPOCH, |r| r.before)
    }

    /// The destination of `route` ([`Output::route`]). None: the log was turned off (and the
    /// grace has passed): lines of before are let go.
    fn dest(&mut self, route: u64) -> Option<&mut Dest> {
        match self.retired.iter_mut().find(|r| r.before == route) {
            Some(r) => r.dest.as_mut(),
            None => self.dest.as_mut(),
        }
    }

    /// Adds `batch`'s lines to those of the batches before it in this wake-up.
    /// [`Output::flush`] writes them: one `writev(2)` per wake-up instead of one `write(2)` per
    /// batch of 64 lines, unless a batch goes elsewhere than the lines before it or the lines
    /// reached [`FLUSH_BYTES`].
    fn take(&mut self, batch: Batch, state: &WriterState) {
        let route = self.route(batch.epoch);
        if self.pending.is_some_and(|(_, was)| was != route) || self.bytes >= FLUSH_BYTES {
            self.flush(state);
        }
        if self.dest(route).is_some() {
            self.bytes += batch.text.len();
            self.texts.push(batch.text);
            let lines = self.pending.map_or(0, |(n, _)| n);
            self.pending = Some((lines + batch.lines, route));
        } else {
            self.give_back(batch.text, state);
        }
    }

    /// Empties `text` for a thread to fill again. While the log is off the buffers are freed,
    /// not kept, and so is one that grew past [`KEPT_BYTES`].
    fn give_back(&self, mut text: Vec<u8>, state: &WriterState) {
        if self.wanted.is_some() && text.capacity() <= KEPT_BYTES {
            text.clear();
            let mut given_back = lock(&state.given_back);
            if given_back.len() < GIVEN_BACK {
                given_back.push(text);
            }
        }
    }

    /// Writes the lines taken since the last flush, if any, and gives their buffers back.
    fn flush(&mut self, state: &WriterState) {
        let Some((lines, route)) = self.pending.take() else {
            return;
        };
        let mut texts = std::mem::take(&mut self.texts);
        let written = self.dest(route).map(|dest| dest.write(&texts));
        for text in texts.drain(..) {
            self.give_back(text, state);
        }
        self.texts = texts;
        self.bytes = 0;
        match written {
            Some(Ok(())) if self.failing => {
                self.failing = false;
                tracing::info!("access log writes again");
            }
            Some(Err(e)) => {
                state.dropped.fetch_add(lines, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::error!(error = %e, "access log write failed; lines are dropped and counted until a write succeeds");
                }
            }
            Some(Ok(())) | None => {}
        }
    }
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
        let long = http::Uri::try_from(format!("/{}", "p".repeat(4000))).expect("uri");
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
        // 20 lines of 4 KB: the first batch (the lines reaching BATCH_BYTES) is queued, what
        // came after is dropped. Counted by lines alone, all 20 would be one batch, queued.
        let dropped = log.dropped();
        assert!(dropped > 0 && dropped < 20, "dropped {dropped}");
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

    #[test]
    fn a_buffer_grown_past_kept_bytes_is_freed_not_given_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (output, _) = text_output_to_a_file(dir.path());
        let state = AccessLog::default().inner.state.clone();
        output.give_back(Vec::with_capacity(KEPT_BYTES + 1), &state);
        assert!(lock(&state.given_back).is_empty());
        output.give_back(Vec::with_capacity(BATCH_BYTES), &state);
        assert_eq!(lock(&state.given_back).len(), 1);
    }

    #[test]
    fn the_batches_of_one_wake_up_are_written_together_when_it_has_taken_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut output, path) = text_output_to_a_file(dir.path());
        let state = AccessLog::default().inner.state.clone();
        for _ in 0..2 {
            output.take(batch(2), &state);
        }
        // Taken, not yet written: one write for the whole wake-up, not one per batch.
        assert_eq!(lines_in(&path), 0);
        output.flush(&state);
        assert_eq!(lines_in(&path), 4);
        // Given back to be filled again, both batches' buffers, emptied.
        let given_back = lock(&state.given_back);
        assert_eq!(given_back.len(), 2);
        assert!(given_back.iter().all(Vec::is_empty));
        drop(given_back);
        // Nothing is left to write twice.
        output.flush(&state);
        assert_eq!(lines_in(&path), 4);
    }

    #[test]
    fn a_wake_up_that_takes_more_than_flush_bytes_of_lines_writes_them_on_reaching_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut output, path) = text_output_to_a_file(dir.path());
        let state = AccessLog::default().inner.state.clone();
        let mut taken = 0;
        while output.bytes < FLUSH_BYTES {
            output.take(batch(64), &state);
            taken += 64;
        }
        assert_eq!(lines_in(&path), 0);
        // The next batch finds the lines at the bound: what came before it is written first.
        output.take(batch(64), &state);
        assert_eq!(lines_in(&path), taken);
        output.flush(&state);
        assert_eq!(lines_in(&path), taken + 64);
    }

    /// A batch of `lines` lines of epoch 1, as a thread hands it over.
    fn batch(lines: usize) -> Batch {
        Batch {
            text: format!("{}\n", "x".repeat(100)).repeat(lines).into_bytes(),
            lines: lines as u64,
            epoch: 1,
        }
    }

    /// A writer of text lines to `access.log` in `dir`, and that file's path.
    fn text_output_to_a_file(dir: &Path) -> (Output, std::path::PathBuf) {
        let path = dir.join("access.log");
        let target = AccessLogTarget::File(path.clone());
        let dest = Dest::open(&target).expect("opens");
        (Output::new(Some(target), Some(dest)), path)
    }

    /// Shuts `log` down as the server does: what was handed over is written, the file closed.
    fn close(log: &AccessLog) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(log.close());
    }

    /// How many lines the file at `path` holds.
    fn lines_in(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .expect("reads")
            .lines()
            .count()
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
    fn lines_of_before_a_reload_stay_in_the_old_file_in_the_old_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (old, new) = (dir.path().join("old.log"), dir.path().join("new.log"));
        let log = AccessLog::default();
        log.start(&config(
            AccessLogTarget::File(old.clone()),
            AccessLogFormat::Text,
        ))
        .expect("starts");
        let (inner, new_path) = (log.inner.clone(), new.clone());
        std::thread::spawn(move || {
            let log = AccessLog { inner };
            let _bound = log.bind_thread();
            // Ended, its line not formatted yet, when the reload comes: it is written in the
            // format of the epoch it ended in, to that epoch's file.
            emit(record::sample());
            log.configure(&config(
                AccessLogTarget::File(new_path),
                AccessLogFormat::Json,
            ));
            emit(record::sample());
        })
        .join()
        .expect("thread");
        close(&log);
        let old_text = std::fs::read_to_string(&old).expect("old");
        let new_text = std::fs::read_to_string(&new).expect("new");
        assert_eq!(old_text.lines().count(), 1, "{old_text}");
        assert!(old_text.contains("\"GET / HTTP/1.1\""), "{old_text}");
        assert_eq!(new_text.lines().count(), 1, "{new_text}");
        assert!(new_text.starts_with("{\"time\""), "{new_text}");
    }

    #[test]
    fn lines_of_each_epoch_go_to_its_file_when_reloads_come_faster_than_the_writer() {
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
            // Two reloads within one of the writer's ticks (or within its grace), each with
            // a line of the epoch before still to be written.
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
    fn a_writer_keeps_at_most_retired_destinations_and_the_oldest_lines_go_to_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, _) = text_output_to_a_file(dir.path());
        let last = 1 + RETIRED as u64 + 2;
        for epoch in 2..=last {
            let file = dir.path().join(format!("{epoch}.log"));
            out.switch(epoch, Some(AccessLogTarget::File(file)));
        }
        assert_eq!(out.retired.len(), RETIRED);
        // Epochs 1 and 2 lost their files (the switches to 2 and 3 were let go): their lines
        // go to the file of epoch 3, kept by the switch to 4.
        assert_eq!(out.route(1), 4);
        assert_eq!(out.route(2), 4);
        assert_eq!(out.route(3), 4);
        assert_eq!(out.route(4), 5);
        assert_eq!(out.route(last), NO_EPOCH);
        assert!(out.dest(4).is_some() && out.dest(NO_EPOCH).is_some());
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
    fn turning_the_log_off_frees_the_spare_boxes_and_buffers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let on = config(
            AccessLogTarget::File(dir.path().join("access.log")),
            AccessLogFormat::Text,
        );
        let log = AccessLog::default();
        log.start(&on).expect("starts");
        let inner = log.inner.clone();
        std::thread::spawn(move || {
            let log = AccessLog { inner };
            let _bound = log.bind_thread();
            // Two full batches, handed over: their buffers come back to be filled again (the
            // second batch may take the first's).
            for _ in 0..2 * FLUSH_LINES {
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
            flush_thread();
            assert!(spare().is_none(), "the thread's boxes are freed once off");
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
            let bound = AccessLog { inner: first }.bind_thread();
            emit(record::sample());
            drop(bound);
            let _bound = AccessLog { inner: second }.bind_thread();
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
        assert!(a.starts_with("{\"time\"") && a.lines().count() == 1, "{a}");
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
