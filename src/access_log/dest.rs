//! An access log's open destination: stderr, or a file opened for append, written a wake-up's
//! batches at a time with one `writev(2)`.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::AccessLogTarget;

/// How `target` is named in logs and errors: its path, or `-` for stderr.
pub(super) fn target_name(target: &AccessLogTarget) -> String {
    match target {
        AccessLogTarget::Stderr => "-".to_owned(),
        AccessLogTarget::File(p) => p.display().to_string(),
    }
}

/// An open destination.
#[derive(Debug)]
pub(super) enum Dest {
    Stderr,
    File(File),
}

impl Dest {
    pub(super) fn open(target: &AccessLogTarget) -> io::Result<Dest> {
        match target {
            AccessLogTarget::Stderr => Ok(Dest::Stderr),
            AccessLogTarget::File(path) => open_file(path).map(Dest::File),
        }
    }

    /// Writes `texts`, one after the other: one `writev(2)` when the destination takes them
    /// whole, as it nearly always does.
    pub(super) fn write(&mut self, texts: &[Vec<u8>]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = texts.iter().map(|t| IoSlice::new(t)).collect();
        match self {
            // Locked like syncgate's own log lines, so that neither splits the other's.
            Dest::Stderr => write_all_vectored(&mut io::stderr().lock(), &mut slices),
            Dest::File(f) => write_all_vectored(f, &mut slices),
        }
    }
}

/// `Write::write_all` for several buffers (std's `write_all_vectored` is not stable): writes
/// until every byte of `slices` is taken, going on after a partial write from where it
/// stopped.
fn write_all_vectored(out: &mut impl Write, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `at_most` bytes a call, fails once with `Interrupted`, and takes nothing
    /// (`Ok(0)`) once `full` bytes were taken.
    struct Stingy {
        taken: Vec<u8>,
        at_most: usize,
        interrupted: bool,
        full: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let budget = self.at_most.min(self.full.saturating_sub(self.taken.len()));
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(budget - n);
                self.taken.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn several_buffers_are_written_whole_across_partial_writes_or_fail_when_none_is_taken() {
        let texts = [
            b"first line\n".to_vec(),
            Vec::new(),
            b"second\nthird\n".to_vec(),
        ];
        let whole = texts.concat();
        let mut out = Stingy {
            taken: Vec::new(),
            at_most: 4,
            interrupted: false,
            full: usize::MAX,
        };
        let mut slices: Vec<IoSlice<'_>> = texts.iter().map(|t| IoSlice::new(t)).collect();
        write_all_vectored(&mut out, &mut slices).expect("written");
        assert_eq!(out.taken, whole, "every byte, in order, once");

        let mut full = Stingy {
            taken: Vec::new(),
            at_most: 4,
            interrupted: true,
            full: 7,
        };
        let mut slices: Vec<IoSlice<'_>> = texts.iter().map(|t| IoSlice::new(t)).collect();
        let e = write_all_vectored(&mut full, &mut slices)
            .expect_err("a destination that takes nothing");
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(full.taken, whole[..7]);
    }
}
