//! Where access log lines go: a batch per proxy thread, a bounded channel, one writer thread.
//!
//! A proxy thread adds the box of each ended request's [`Record`] to its own batch (no lock,
//! no copy) and hands the batch to the writer at [`FLUSH_LINES`], every [`FLUSH_EVERY`] (the
//! server's flush task), and when the thread ends. The hand-over is `try_send` on a channel
//! of [`QUEUE`] batches: when the writer falls behind (a slow disk, a blocked stderr pipe) the
//! batch is dropped and its lines counted (`syncgate_access_log_dropped_total`); a request
//! never waits for the log. The writer thread formats the lines, a batch at a time, does
//! every `write(2)` (one per batch) and every `open(2)`, and gives the batch's boxes back,
//! emptied, for the threads to fill again ([`spare`]).
//!
//! Small batches taken often keep few boxes in flight: a box comes back to be filled while
//! it is still in a cache, and a request that fills a cold one pays for every line of it;
//! but each of the writer's wake-ups costs the core it shares two context switches. Measured
//! (CPU per request, log on, side by side): 64-line batches taken every 5 ms, 1.1% less than
//! 256 lines every 20 ms; 64 every 10 ms, 1.0% less again; 64 every 20 ms, 1.4% more than
//! every 10 ms; 32 every 2 ms, 2.4% more than 64 every 5 ms.
//!
//! A reload that changes the log (path, format, on/off) starts a new *epoch*. A thread never
//! mixes epochs in one batch, and the writer keeps the previous destination and format for
//! [`GRACE`], so that the lines of requests completed before the reload, still in the threads'
//! batches, end in the old file in the old format, and the later ones in the new file in the
//! new format. `SIGUSR1` ([`AccessLog::reopen`]) reopens the file by its path (after
//! logrotate renamed it).

#![allow(
    clippy::vec_box,
    reason = "the boxes themselves travel: a record is filled in place and handed on as a pointer"
)]

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::format::{self, Clock};
use super::record::Record;
use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};

/// A thread hands its lines to the writer once it has this many.
const FLUSH_LINES: usize = 64;
/// ... or this long after the last hand-over, whatever it holds (the server's flush task).
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Batches of written records whose boxes the writer keeps for the threads to reuse, at most
/// (8,192 boxes, 2.5 MiB): more are freed, and all of them when the log is turned off.
const GIVEN_BACK: usize = 128;
/// Batches waiting for the writer, at most (16,384 lines in 5 MiB of boxes, 160 ms of lines
/// at 100,000 requests/s): more are dropped and counted.
const QUEUE: usize = 256;
/// While batches keep coming, the writer takes them this often (see [`Output::run`]).
const WRITER_TICK: Duration = Duration::from_millis(10);
/// The writer writes the lines it formatted when it has taken everything queued, or before
/// it adds a batch to lines that reached this size. 64 KiB, a pipe's buffer on Linux: a write
/// to stderr piped to journald or a container runtime is taken whole when the pipe has room,
/// and holds the lock on stderr (which syncgate's own log lines take too) for about one
/// pipe's worth. At 64,000 requests/s a wake-up's lines are about that size.
const FLUSH_BYTES: usize = 64 * 1024;
/// After a reload changed the destination, the old one stays open this long for the lines
/// of requests that ended before the reload (threads hand theirs over within [`FLUSH_EVERY`]).
const GRACE: Duration = Duration::from_secs(1);
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
    /// The epoch (see the module's doc) of the lines written from now on.
    epoch: AtomicU64,
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
    /// The records of written batches, released, for the threads to fill again (see
    /// [`spare`]); at most [`GIVEN_BACK`] batches.
    given_back: Mutex<Vec<Vec<Box<Record>>>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Switch to this destination (None: the log is off) and format from this epoch on.
    switch: Option<(u64, Option<AccessLogTarget>, AccessLogFormat)>,
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

/// Lines handed to the writer.
#[derive(Debug)]
struct Batch {
    records: Vec<Box<Record>>,
    epoch: u64,
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
                epoch: AtomicU64::new(0),
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
        let mut output = Output::new(wanted, dest, config.format);
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
        let epoch = self.inner.epoch.load(Ordering::Acquire) + 1;
        // The writer learns of the switch before any thread can write a line of the new epoch.
        lock(&self.inner.state.pending).switch = Some((
            epoch,
            config.enabled.then(|| config.target.clone()),
            config.format,
        ));
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
            }
        });
        ThreadGuard {
            _not_send: std::marker::PhantomData,
        }
    }

    fn publish(&self, epoch: u64, config: &AccessLogConfig) {
        self.inner.epoch.store(epoch, Ordering::Release);
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
            }
        });
    }
}

thread_local! {
    static THREAD: RefCell<ThreadBuf> = const {
        RefCell::new(ThreadBuf {
            log: None,
            batch: Vec::new(),
            epoch: 0,
            spare: Vec::new(),
            empty: None,
        })
    };
}

/// A proxy thread's records: those filled and not handed over yet, and boxes to fill.
struct ThreadBuf {
    log: Option<Arc<Inner>>,
    /// Records of ended requests, of `epoch`, not handed over yet.
    batch: Vec<Box<Record>>,
    epoch: u64,
    /// Boxes given back by the writer, to be filled (last in, first out: the one taken is the
    /// likeliest to be in cache).
    spare: Vec<Box<Record>>,
    /// An emptied `spare`, kept to become the next `batch` (no allocation per batch).
    empty: Option<Vec<Box<Record>>>,
}

impl ThreadBuf {
    fn push(&mut self, record: Box<Record>) {
        let Some(log) = self.log.as_deref() else {
            return;
        };
        let epoch = log.epoch.load(Ordering::Acquire);
        if self.epoch != epoch {
            hand_over(log, &mut self.batch, self.epoch);
            self.epoch = epoch;
        }
        if self.batch.capacity() == 0 {
            self.batch = self
                .empty
                .take()
                .unwrap_or_else(|| Vec::with_capacity(FLUSH_LINES));
        }
        self.batch.push(record);
        if self.batch.len() >= FLUSH_LINES {
            hand_over(log, &mut self.batch, self.epoch);
        }
    }

    /// A box to fill: the thread's own spares first, then a batch the writer gave back.
    fn spare(&mut self) -> Option<Box<Record>> {
        if let Some(record) = self.spare.pop() {
            return Some(record);
        }
        let log = self.log.as_deref()?;
        let given = lock(&log.state.given_back).pop()?;
        let emptied = std::mem::replace(&mut self.spare, given);
        if self.empty.is_none() && emptied.capacity() > 0 {
            self.empty = Some(emptied);
        }
        self.spare.pop()
    }

    fn flush(&mut self) {
        if let Some(log) = self.log.as_deref() {
            hand_over(log, &mut self.batch, self.epoch);
        }
    }
}

/// Sends the records of `batch` (of `epoch`) to the writer, or drops and counts them when its
/// queue is full.
fn hand_over(log: &Inner, batch: &mut Vec<Box<Record>>, epoch: u64) {
    if batch.is_empty() {
        return;
    }
    let batch_sent = Batch {
        records: std::mem::take(batch),
        epoch,
    };
    if let Err(TrySendError::Full(msg) | TrySendError::Disconnected(msg)) =
        log.tx.try_send(Msg::Lines(batch_sent))
    {
        if let Msg::Lines(mut lost) = msg {
            log.state
                .dropped
                .fetch_add(lost.records.len() as u64, Ordering::Relaxed);
            // Its boxes are freed; its room holds the next lines.
            lost.records.clear();
            *batch = lost.records;
        }
    }
}

/// A box for a request's record, when the calling thread has one to reuse.
pub(super) fn spare() -> Option<Box<Record>> {
    THREAD
        .try_with(|t| t.try_borrow_mut().ok().and_then(|mut t| t.spare()))
        .ok()
        .flatten()
}

/// Puts an ended request's record into the calling thread's batch; on a thread without a log
/// it is let go.
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

fn target_name(target: &AccessLogTarget) -> String {
    match target {
        AccessLogTarget::Stderr => "-".to_owned(),
        AccessLogTarget::File(p) => p.display().to_string(),
    }
}

/// An open destination.
#[derive(Debug)]
enum Dest {
    Stderr,
    File(File),
}

impl Dest {
    fn open(target: &AccessLogTarget) -> io::Result<Dest> {
        match target {
            AccessLogTarget::Stderr => Ok(Dest::Stderr),
            AccessLogTarget::File(path) => open_file(path).map(Dest::File),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            // Locked like syncgate's own log lines, so that neither splits the other's.
            Dest::Stderr => io::stderr().lock().write_all(bytes),
            Dest::File(f) => f.write_all(bytes),
        }
    }
}

/// Opens `path` for append, creating it (mode 0640: lines name clients) if absent. A FIFO or
/// device put there after validation is refused: `O_NONBLOCK` keeps a FIFO without a reader
/// from blocking the open, and the opened file must be a regular one.
fn open_file(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    Ok(file)
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
    /// The format of the current epoch's lines.
    format: AccessLogFormat,
    /// What older epochs' lines still get for a moment after a switch.
    previous: Option<Previous>,
    /// The last write failed (logged once, until one succeeds again).
    failing: bool,
    clock: Clock,
    /// A monotonic instant and the wall-clock time (since the Unix epoch) read with it: see
    /// [`wall_time`].
    anchor: Option<(Instant, Duration)>,
    /// Lines formatted and not yet written: those of every batch one wake-up took (its
    /// capacity kept from wake-up to wake-up).
    text: Vec<u8>,
    /// How many lines `text` holds (counted as dropped if their write fails), and whether
    /// they go where the lines of before the last switch go.
    pending: Option<(u64, bool)>,
}

/// The destination and format before the last switch.
struct Previous {
    /// None: the destination did not change (only the format, or opening the new one failed).
    dest: Option<Dest>,
    format: AccessLogFormat,
    until: Instant,
}

impl Output {
    /// The writer of epoch 1, writing to `dest` (which `wanted` names; None: the log is off).
    fn new(wanted: Option<AccessLogTarget>, dest: Option<Dest>, format: AccessLogFormat) -> Output {
        Output {
            epoch: 1,
            open: wanted.clone(),
            wanted,
            dest,
            format,
            previous: None,
            failing: false,
            clock: Clock::new(),
            anchor: None,
            text: Vec::new(),
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
                let waited = match self.previous.as_ref().map(|p| p.until) {
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
                    // the lines formatted so far go where they were meant to before it.
                    if batch.epoch > self.epoch {
                        self.flush(state);
                        closing |= self.apply(state);
                    }
                    self.format(batch, state);
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
            if self
                .previous
                .as_ref()
                .is_some_and(|p| Instant::now() >= p.until)
            {
                self.previous = None;
            }
            if closing {
                return;
            }
        }
    }

    /// Applies what the control plane asked for; whether to end.
    fn apply(&mut self, state: &WriterState) -> bool {
        let (switch, reopen, closing) = {
            let mut p = lock(&state.pending);
            (p.switch.take(), std::mem::take(&mut p.reopen), p.closing)
        };
        if let Some((epoch, target, format)) = switch {
            self.switch(epoch, target, format);
            if self.wanted.is_none() {
                // Off: the spare boxes (up to 2.5 MiB) are not needed until it is on again.
                drop(std::mem::take(&mut *lock(&state.given_back)));
            }
        }
        if reopen {
            self.reopen();
        }
        closing
    }

    fn switch(&mut self, epoch: u64, target: Option<AccessLogTarget>, format: AccessLogFormat) {
        self.epoch = epoch;
        self.wanted = target;
        let mut previous = Previous {
            dest: None,
            format: std::mem::replace(&mut self.format, format),
            until: Instant::now() + GRACE,
        };
        if self.wanted != self.open {
            match self.wanted.as_ref().map(Dest::open).transpose() {
                Ok(dest) => {
                    previous.dest = std::mem::replace(&mut self.dest, dest);
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
        self.previous = Some(previous);
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

    /// Where the lines of an older epoch (`older`) or of the current one go, and in which
    /// format: lines recorded before the last switch go to the previous destination and in
    /// its format while it is kept. None: the log was turned off (and the grace has passed):
    /// lines of before are let go.
    fn dest(&mut self, older: bool) -> Option<(&mut Dest, AccessLogFormat)> {
        match (&mut self.previous, older) {
            (Some(p), true) => p
                .dest
                .as_mut()
                .or(self.dest.as_mut())
                .map(|d| (d, p.format)),
            _ => self.dest.as_mut().map(|d| (d, self.format)),
        }
    }

    /// Formats `batch`'s lines after those of the batches before it in this wake-up, and
    /// gives its boxes back to the threads. [`Output::flush`] writes them: one `write(2)` per
    /// wake-up instead of one per batch of 64 lines, unless a batch goes elsewhere than the
    /// lines before it or the text has reached [`FLUSH_BYTES`].
    fn format(&mut self, mut batch: Batch, state: &WriterState) {
        let older = batch.epoch < self.epoch;
        if self
            .pending
            .is_some_and(|(_, was_older)| was_older != older)
            || self.text.len() >= FLUSH_BYTES
        {
            self.flush(state);
        }
        if let Some(format) = self.dest(older).map(|(_, format)| format) {
            let anchor = anchor(&mut self.anchor);
            for record in &batch.records {
                let time = wall_time(anchor, record.done.unwrap_or(record.started));
                format::write(&mut self.text, format, &record.line(time), &mut self.clock);
            }
            let lines = self.pending.map_or(0, |(n, _)| n);
            self.pending = Some((lines + batch.records.len() as u64, older));
        }
        for record in &mut batch.records {
            record.release();
        }
        // While the log is off, the last batches' boxes are freed, not kept as spares.
        if self.wanted.is_some() {
            let mut given_back = lock(&state.given_back);
            if given_back.len() < GIVEN_BACK {
                given_back.push(batch.records);
            }
        }
    }

    /// Writes the lines formatted since the last flush, if any.
    fn flush(&mut self, state: &WriterState) {
        let Some((lines, older)) = self.pending.take() else {
            return;
        };
        let text = std::mem::take(&mut self.text);
        let written = self.dest(older).map(|(dest, _)| dest.write(&text));
        self.text = text;
        self.text.clear();
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

/// `anchor`, read again when it is [`ANCHOR_FOR`] old: a step of the wall clock (NTP, an
/// operator) shows in the lines within a second.
fn anchor(anchor: &mut Option<(Instant, Duration)>) -> (Instant, Duration) {
    let now = Instant::now();
    match *anchor {
        Some(a) if now.saturating_duration_since(a.0) < ANCHOR_FOR => a,
        _ => {
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
    use super::super::record;
    use super::*;

    fn config(target: AccessLogTarget, format: AccessLogFormat) -> AccessLogConfig {
        AccessLogConfig {
            enabled: true,
            target,
            format,
        }
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
        let log = AccessLog::with_queue(1);
        log.inner.enabled.store(true, Ordering::Release);
        log.inner.epoch.store(1, Ordering::Release);
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
    fn the_batches_of_one_wake_up_are_written_together_when_it_has_taken_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut output, path) = text_output_to_a_file(dir.path());
        let state = AccessLog::default().inner.state.clone();
        for _ in 0..2 {
            let batch = Batch {
                records: vec![record::sample(), record::sample()],
                epoch: 1,
            };
            output.format(batch, &state);
        }
        // Formatted, not yet written: one write(2) for the whole wake-up, not one per batch.
        assert_eq!(lines_in(&path), 0);
        output.flush(&state);
        assert_eq!(lines_in(&path), 4);
        // Given back to be filled again, both batches' boxes.
        assert_eq!(lock(&state.given_back).len(), 2);
        // Nothing is left to write twice.
        output.flush(&state);
        assert_eq!(lines_in(&path), 4);
    }

    #[test]
    fn a_wake_up_that_takes_more_than_flush_bytes_of_lines_writes_them_on_reaching_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut output, path) = text_output_to_a_file(dir.path());
        let state = AccessLog::default().inner.state.clone();
        let batch = || Batch {
            records: (0..FLUSH_LINES).map(|_| record::sample()).collect(),
            epoch: 1,
        };
        let mut formatted = 0;
        while output.text.len() < FLUSH_BYTES {
            output.format(batch(), &state);
            formatted += FLUSH_LINES;
        }
        assert_eq!(lines_in(&path), 0);
        // The next batch finds the text at the bound: what came before it is written first.
        output.format(batch(), &state);
        assert_eq!(lines_in(&path), formatted);
        output.flush(&state);
        assert_eq!(lines_in(&path), formatted + FLUSH_LINES);
    }

    /// A writer of text lines to `access.log` in `dir`, and that file's path.
    fn text_output_to_a_file(dir: &Path) -> (Output, std::path::PathBuf) {
        let path = dir.join("access.log");
        let target = AccessLogTarget::File(path.clone());
        let dest = Dest::open(&target).expect("opens");
        (
            Output::new(Some(target), Some(dest), AccessLogFormat::Text),
            path,
        )
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(log.close());
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
            // Buffered, not handed over yet, when the reload comes.
            emit(record::sample());
            log.configure(&config(
                AccessLogTarget::File(new_path),
                AccessLogFormat::Json,
            ));
            emit(record::sample());
        })
        .join()
        .expect("thread");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(log.close());
        let old_text = std::fs::read_to_string(&old).expect("old");
        let new_text = std::fs::read_to_string(&new).expect("new");
        assert_eq!(old_text.lines().count(), 1, "{old_text}");
        assert!(old_text.contains("\"GET / HTTP/1.1\""), "{old_text}");
        assert_eq!(new_text.lines().count(), 1, "{new_text}");
        assert!(new_text.starts_with("{\"time\""), "{new_text}");
    }

    #[test]
    fn the_boxes_of_a_written_batch_come_back_to_be_filled_holding_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AccessLog::default();
        log.start(&config(
            AccessLogTarget::File(dir.path().join("access.log")),
            AccessLogFormat::Text,
        ))
        .expect("starts");
        // A backend whose names are too long to copy: the record holds it until written.
        let backend = Arc::new(crate::backend::Backend::new(
            &"p".repeat(60),
            &"b".repeat(20),
            "127.0.0.1:9".parse().expect("addr"),
            1,
        ));
        let (inner, held) = (log.inner.clone(), backend.clone());
        std::thread::spawn(move || {
            let log = AccessLog { inner };
            let _bound = log.bind_thread();
            for _ in 0..FLUSH_LINES {
                let mut r = record::sample();
                r.answered(&held, Duration::from_millis(1));
                emit(r);
            }
            // A full batch was handed over: no flush.
            let deadline = Instant::now() + Duration::from_secs(5);
            while lock(&log.inner.state.given_back).is_empty() {
                assert!(Instant::now() < deadline, "the batch was not given back");
                std::thread::sleep(Duration::from_millis(5));
            }
            // This thread's handle and the test's: the written records hold none.
            assert_eq!(Arc::strong_count(&held), 2, "written records hold nothing");
            for _ in 0..FLUSH_LINES {
                assert!(spare().is_some(), "every box comes back");
            }
            assert!(spare().is_none());
        })
        .join()
        .expect("thread");
        assert_eq!(Arc::strong_count(&backend), 1);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn turning_the_log_off_frees_the_spare_boxes() {
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
            for _ in 0..FLUSH_LINES {
                emit(record::sample());
            }
        })
        .join()
        .expect("thread");
        let spares = || lock(&log.inner.state.given_back).len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while spares() == 0 {
            assert!(Instant::now() < deadline, "the batch was not given back");
            std::thread::sleep(Duration::from_millis(5));
        }
        log.configure(&AccessLogConfig {
            enabled: false,
            ..on
        });
        while spares() != 0 {
            assert!(Instant::now() < deadline, "the spares were kept");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(log.dropped(), 0);
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
        let epoch = log.inner.epoch.load(Ordering::Acquire);
        log.configure(&cfg);
        assert_eq!(log.inner.epoch.load(Ordering::Acquire), epoch);
        log.configure(&AccessLogConfig {
            enabled: true,
            ..cfg
        });
        assert!(log.is_enabled());
        assert_eq!(log.inner.epoch.load(Ordering::Acquire), epoch + 1);
    }
}
