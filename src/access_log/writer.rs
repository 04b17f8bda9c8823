//! The access log's writer thread: takes the batches of text the proxy threads hand over,
//! writes each wake-up's with one `writev(2)` ([`super::dest`]), gives the emptied buffers
//! back, and routes each batch to the destination of its epoch across reloads.
//!
//! It wakes every [`WRITER_TICK`] while batches keep coming, so that senders never have to
//! wake it; it blocks, to be woken by the next batch, only once a look found the queue empty.
//! A reload that changes the destination leaves the old one open for [`GRACE`], for the lines
//! of requests that ended before it (see [`super::sink`] on epochs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::dest::{target_name, Dest};
use crate::config::AccessLogTarget;

/// The largest batch buffer kept for reuse (one long line may take a batch past
/// [`super::sink`]'s `BATCH_BYTES`): a larger one is freed once written.
pub(super) const KEPT_BYTES: usize = 64 * 1024;
/// Emptied batch buffers the writer keeps for the threads to fill again, at most (4 MiB of
/// 32-KiB buffers, 8 MiB at worst): a tick's batches at 300,000 requests/s. More are
/// freed, and all of them when the log is turned off.
const GIVEN_BACK: usize = 128;
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
/// of requests that ended before the reload (threads hand theirs over within `FLUSH_EVERY`).
const GRACE: Duration = Duration::from_secs(1);
/// Files kept for their lines after a switch, at most: as many reloads within [`GRACE`]
/// that each change the destination. Beyond, the oldest one's lines go where the next
/// epoch's go (let go, if the log was off then).
const RETIRED: usize = 8;
/// [`Output::route`] of the lines that go to the current destination.
const CURRENT: u64 = u64::MAX;

/// What the control plane tells the writer, and what both count.
#[derive(Debug, Default)]
pub(super) struct WriterState {
    pub(super) pending: Mutex<Pending>,
    /// Lines lost: the queue was full, or a write failed.
    pub(super) dropped: AtomicU64,
    /// Emptied batch buffers, for the threads to fill again; at most [`GIVEN_BACK`].
    pub(super) given_back: Mutex<Vec<Vec<u8>>>,
}

/// What the control plane asked the writer for, and it has not done yet.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Switch to each destination (None: the log is off) from its epoch on, in order: two
    /// reloads may come within one of the writer's ticks.
    pub(super) switches: Vec<(u64, Option<AccessLogTarget>)>,
    /// Reopen the file by its path.
    pub(super) reopen: bool,
    /// Write what is queued and end.
    pub(super) closing: bool,
}

/// What the writer's queue carries.
#[derive(Debug)]
pub(super) enum Msg {
    Lines(Batch),
    /// Look at [`Pending`].
    Wake,
}

/// Lines handed to the writer: `lines` of them, formatted, all of `epoch`.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) text: Vec<u8>,
    pub(super) lines: u64,
    pub(super) epoch: u64,
}

/// A lock, also when a thread panicked holding it: what it guards stays consistent (counts
/// and buffers, each changed in one step).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer thread's state.
pub(super) struct Output {
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
/// wrote there ([`Output::replace`]): by a switch that changed the destination (not one that
/// changed only the format, or whose new destination could not be opened), or by a reopen
/// that opened at last a destination a switch could not.
struct Retired {
    /// The epoch that switched away from it: lines of the epochs before this one (and since
    /// the switch before) go here.
    before: u64,
    /// None: the log was off before the switch; lines of its epochs are let go.
    dest: Option<Dest>,
    until: Instant,
}

impl Output {
    /// The writer of epoch 1, writing to `dest` (which `wanted` names; None: the log is off).
    pub(super) fn new(wanted: Option<AccessLogTarget>, dest: Option<Dest>) -> Output {
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
    pub(super) fn run(&mut self, rx: &Receiver<Msg>, state: &WriterState) {
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
        if self.wanted != self.open {
            match self.wanted.as_ref().map(Dest::open).transpose() {
                Ok(dest) => {
                    self.replace(dest);
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
                    if self.dest.is_some() {
                        tracing::error!(path, error = %e, "cannot open the new access log; lines keep going to the old one (SIGUSR1 tries again)");
                    } else {
                        tracing::error!(path, error = %e, "cannot open the new access log; lines are dropped and counted until it opens (SIGUSR1 tries again)");
                    }
                }
            }
        }
    }

    /// Makes `dest` the current destination, keeping the one it replaces for [`GRACE`] for
    /// the lines of the epochs before this one.
    fn replace(&mut self, dest: Option<Dest>) {
        let before = std::mem::replace(&mut self.dest, dest);
        // Kept files are bounded; a kept "off" holds nothing, and is let go with its grace.
        if before.is_some() && self.retired.iter().filter(|r| r.dest.is_some()).count() >= RETIRED {
            if let Some(oldest) = self.retired.iter().position(|r| r.dest.is_some()) {
                // Its lines go where the next epochs' go.
                self.retired.remove(oldest);
            }
        }
        self.retired.push(Retired {
            before: self.epoch,
            dest: before,
            until: Instant::now() + GRACE,
        });
    }

    fn reopen(&mut self) {
        let Some(target @ AccessLogTarget::File(_)) = self.wanted.clone() else {
            return;
        };
        match Dest::open(&target) {
            Ok(dest) => {
                if self.open.as_ref() == Some(&target) {
                    // The same path: the old file (renamed by logrotate) is closed here, and
                    // the lines of this epoch go on in the new one.
                    self.dest = Some(dest);
                } else {
                    // A reload's file that could not be opened: the one its lines went to
                    // meanwhile is kept for the lines of the epochs before.
                    self.replace(Some(dest));
                }
                self.open = Some(target.clone());
                tracing::info!(path = target_name(&target), "access log reopened");
            }
            Err(e) => {
                tracing::error!(path = target_name(&target), error = %e, "cannot reopen the access log; lines keep going to the file open before");
            }
        }
    }

    /// Where the lines of `epoch` go: the destination it wrote to, while that is kept after
    /// a switch (the `before` of its [`Retired`]), else the current one ([`CURRENT`]).
    fn route(&self, epoch: u64) -> u64 {
        self.retired
            .iter()
            .find(|r| epoch < r.before)
            .map_or(CURRENT, |r| r.before)
    }

    /// The destination of `route` ([`Output::route`]). None: the log was off then, or is off
    /// now and the grace has passed: the lines are let go.
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
            if route == CURRENT && self.wanted.is_some() {
                // On, but its file could not be opened: lost, and counted.
                state.dropped.fetch_add(batch.lines, Ordering::Relaxed);
            }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_batches_of_one_wake_up_are_written_together_when_it_has_taken_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut output, path) = text_output_to_a_file(dir.path());
        let state = WriterState::default();
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
        let state = WriterState::default();
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

    #[test]
    fn a_buffer_grown_past_kept_bytes_is_freed_not_given_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (output, _) = text_output_to_a_file(dir.path());
        let state = WriterState::default();
        output.give_back(Vec::with_capacity(KEPT_BYTES + 1), &state);
        assert!(lock(&state.given_back).is_empty());
        output.give_back(Vec::with_capacity(KEPT_BYTES), &state);
        assert_eq!(lock(&state.given_back).len(), 1);
    }

    /// A batch of `lines` lines of epoch 1, as a thread hands it over.
    fn batch(lines: usize) -> Batch {
        of_epoch(1, lines)
    }

    /// A batch of `lines` lines of `epoch`, each line saying its epoch.
    fn of_epoch(epoch: u64, lines: usize) -> Batch {
        Batch {
            text: format!("epoch {epoch}\n").repeat(lines).into_bytes(),
            lines: lines as u64,
            epoch,
        }
    }

    /// A writer of text lines to `access.log` in `dir`, and that file's path.
    fn text_output_to_a_file(dir: &Path) -> (Output, std::path::PathBuf) {
        let path = dir.join("access.log");
        let target = AccessLogTarget::File(path.clone());
        let dest = Dest::open(&target).expect("opens");
        (Output::new(Some(target), Some(dest)), path)
    }

    #[test]
    fn each_epochs_lines_go_to_the_file_it_wrote_to_across_switches_taken_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, a) = text_output_to_a_file(dir.path());
        let state = WriterState::default();
        let (b, c) = (dir.path().join("b.log"), dir.path().join("c.log"));
        // Two reloads applied in one wake-up, before any line of the epochs they end.
        out.switch(2, Some(AccessLogTarget::File(b.clone())));
        out.switch(3, Some(AccessLogTarget::File(c.clone())));
        for (epoch, lines) in [(1, 1), (2, 2), (3, 3), (1, 1)] {
            out.take(of_epoch(epoch, lines), &state);
        }
        out.flush(&state);
        for (path, epoch, lines) in [(&a, 1, 2), (&b, 2, 2), (&c, 3, 3)] {
            let text = std::fs::read_to_string(path).expect("read");
            assert_eq!(text, format!("epoch {epoch}\n").repeat(lines));
        }
    }

    #[test]
    fn lines_of_an_epoch_the_log_was_off_in_are_let_go_not_sent_to_the_next_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, a) = text_output_to_a_file(dir.path());
        let state = WriterState::default();
        let c = dir.path().join("c.log");
        out.switch(2, None);
        out.switch(3, Some(AccessLogTarget::File(c.clone())));
        for epoch in [1, 2, 3] {
            out.take(of_epoch(epoch, 1), &state);
        }
        out.flush(&state);
        assert_eq!(std::fs::read_to_string(&a).expect("a"), "epoch 1\n");
        assert_eq!(std::fs::read_to_string(&c).expect("c"), "epoch 3\n");
    }

    #[test]
    fn a_reopen_that_opens_a_reloads_file_keeps_the_one_its_lines_went_to_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, _) = text_output_to_a_file(dir.path());
        let state = WriterState::default();
        let b = dir.path().join("b.log");
        let c = dir.path().join("later").join("c.log");
        out.switch(2, Some(AccessLogTarget::File(b.clone())));
        // Its directory does not exist yet: epoch 3's lines go on to b, for now.
        out.switch(3, Some(AccessLogTarget::File(c.clone())));
        out.take(of_epoch(3, 1), &state);
        out.flush(&state);
        std::fs::create_dir(dir.path().join("later")).expect("mkdir");
        out.reopen();
        for epoch in [2, 3] {
            out.take(of_epoch(epoch, 1), &state);
        }
        out.flush(&state);
        let b = std::fs::read_to_string(&b).expect("b");
        assert_eq!(b, "epoch 3\nepoch 2\n", "b keeps epoch 2's lines");
        assert_eq!(std::fs::read_to_string(&c).expect("c"), "epoch 3\n");
    }

    #[test]
    fn lines_of_a_log_turned_on_to_a_file_that_cannot_be_opened_are_counted_as_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut out = Output::new(None, None);
        let state = WriterState::default();
        let missing = dir.path().join("missing").join("a.log");
        out.switch(2, Some(AccessLogTarget::File(missing)));
        out.take(of_epoch(2, 5), &state);
        out.flush(&state);
        assert_eq!(state.dropped.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_switch_of_the_format_alone_keeps_no_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut out, a) = text_output_to_a_file(dir.path());
        for epoch in 2..2 + RETIRED as u64 {
            out.switch(epoch, Some(AccessLogTarget::File(a.clone())));
        }
        assert!(out.retired.is_empty());
        assert_eq!(out.route(1), CURRENT);
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
        assert_eq!(out.route(last), CURRENT);
        assert!(out.dest(4).is_some() && out.dest(CURRENT).is_some());
    }

    /// How many lines the file at `path` holds.
    fn lines_in(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .expect("reads")
            .lines()
            .count()
    }
}
