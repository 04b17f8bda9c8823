//! Writes of a few small buffers as one plain write: what the proxy does with every head and
//! small body it sends, to a client or to a worker.
//!
//! hyper hands an HTTP/1.1 answer to its connection as two buffers (the head it encoded, the
//! body's bytes), `h2` a frame's head and its data, and the upstream client a request's head
//! and body. Written as they come, each is a `writev(2)`. On Linux a `writev` of a few hundred
//! bytes costs the kernel measurably more than a `write(2)` of the same bytes (the vector is
//! copied in and walked, the socket path takes the general iterator): gathering the pieces into
//! one buffer first, a copy of a few hundred bytes, made a proxied request 3.5% cheaper in CPU
//! (`docs/benchmarks.md`). Above [`GATHER_MAX`] bytes the copy would cost more than it saves,
//! and the pieces go as they are.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Pieces that together hold at most this many bytes are copied into one buffer and written
/// with one write; larger writes stay vectored.
pub const GATHER_MAX: usize = 4096;

thread_local! {
    /// The calling thread's gathering buffer: [`GATHER_MAX`] bytes, reused by every write.
    static GATHERED: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(GATHER_MAX));
}

/// Writes `bufs` to `io` as `poll_write_vectored` would, with the same result (how many bytes
/// were written, counted from the start of `bufs`), but with one plain write when only one
/// piece has bytes, or when the pieces together hold at most [`GATHER_MAX`] bytes.
pub fn poll_write<W: AsyncWrite + ?Sized>(
    mut io: Pin<&mut W>,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut with_bytes = bufs.iter().filter(|b| !b.is_empty());
    let first = with_bytes.next();
    if with_bytes.next().is_none() {
        // Nothing to write, or one piece: it goes as it is, with no copy.
        return io.poll_write(cx, first.map_or(&[][..], |b| &b[..]));
    }
    let total = bufs
        .iter()
        .map(|b| b.len())
        .fold(0usize, usize::saturating_add);
    if total > GATHER_MAX {
        return io.poll_write_vectored(cx, bufs);
    }
    let gathered = GATHERED.try_with(|g| {
        // Borrowed only here, around one write of this thread's: never twice at once.
        let mut g = g.try_borrow_mut().ok()?;
        g.clear();
        for b in bufs {
            g.extend_from_slice(b);
        }
        Some(io.as_mut().poll_write(cx, &g))
    });
    match gathered {
        Ok(Some(polled)) => polled,
        // No buffer at hand (the thread is ending): the pieces as they are.
        _ => io.poll_write_vectored(cx, bufs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A writer that records each call and takes at most `limit` bytes per call.
    #[derive(Default)]
    struct Recorder {
        limit: usize,
        written: Vec<u8>,
        plain: usize,
        vectored: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.plain += 1;
            let n = buf.len().min(this.limit);
            this.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.vectored += 1;
            let mut left = this.limit;
            for b in bufs {
                let n = b.len().min(left);
                this.written.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(this.limit - left))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(w: &mut Recorder, pieces: &[&[u8]]) -> usize {
        let bufs: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match poll_write(Pin::new(w), &mut cx, &bufs) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("the recorder is always ready: {other:?}"),
        }
    }

    fn recorder(limit: usize) -> Recorder {
        Recorder {
            limit,
            ..Recorder::default()
        }
    }

    #[test]
    fn small_pieces_go_as_one_plain_write() {
        let mut w = recorder(usize::MAX);
        assert_eq!(write(&mut w, &[b"HTTP/1.1 200 OK\r\n\r\n", b"ok"]), 21);
        assert_eq!((w.plain, w.vectored), (1, 0));
        assert_eq!(w.written, b"HTTP/1.1 200 OK\r\n\r\nok");
    }

    #[test]
    fn one_piece_with_bytes_goes_without_a_copy_and_empty_ones_are_skipped() {
        let mut w = recorder(usize::MAX);
        let head = vec![b'h'; GATHER_MAX * 2];
        assert_eq!(write(&mut w, &[b"", &head, b""]), head.len());
        assert_eq!((w.plain, w.vectored), (1, 0));
        assert_eq!(write(&mut w, &[b"", b""]), 0);
        assert_eq!((w.plain, w.vectored), (2, 0));
    }

    #[test]
    fn pieces_beyond_the_bound_stay_vectored() {
        let mut w = recorder(usize::MAX);
        let body = vec![b'b'; GATHER_MAX];
        assert_eq!(write(&mut w, &[b"head", &body]), GATHER_MAX + 4);
        assert_eq!((w.plain, w.vectored), (0, 1));
        let exactly = vec![b'b'; GATHER_MAX - 4];
        write(&mut w, &[b"head", &exactly]);
        assert_eq!(
            (w.plain, w.vectored),
            (1, 1),
            "the bound itself is gathered"
        );
    }

    #[test]
    fn a_write_while_the_buffer_is_in_use_stays_vectored() {
        let mut w = recorder(usize::MAX);
        GATHERED.with(|g| {
            let _held = g.borrow_mut();
            assert_eq!(write(&mut w, &[b"head", b"body"]), 8);
        });
        assert_eq!((w.plain, w.vectored), (0, 1));
        assert_eq!(w.written, b"headbody");
    }

    proptest! {
        /// Whatever the pieces and however short the write, the bytes written are the first
        /// `n` of the pieces in order, and `n` is what the writer took.
        #[test]
        fn a_write_takes_a_prefix_of_the_pieces(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..5),
            limit in 0usize..10_000,
        ) {
            let mut w = recorder(limit);
            let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let n = write(&mut w, &refs);
            let all: Vec<u8> = pieces.concat();
            prop_assert_eq!(n, all.len().min(limit));
            prop_assert_eq!(&w.written[..], &all[..n]);
        }
    }
}
