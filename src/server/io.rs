//! The client socket as hyper sees it ([`Watched`]): the bytes the protocol sniffing already
//! read are served first; on HTTP/1.1 the first byte of a request head is noted in the
//! connection's [`Activity`] (what `header_read_timeout` bounds, with no timer per request);
//! end of input is noted; and closing drains the socket before it lets go (a lingering close).
//!
//! Why the lingering close: syncgate may answer a request before reading its body (no route,
//! `413`, no ready backend, an error). A client that writes its whole body before it reads
//! (Python's `http.client`, most scripts) is still sending when the answer goes out; closing
//! the socket with unread input makes the kernel send a reset, and the client sees a broken
//! pipe instead of the answer. So after shutting down its writing half, the server reads and
//! discards what the client still sends, until it stops (end of input), for at most
//! [`LINGER_TIME`], [`LINGER_QUIET`] without a byte, or the connection's byte bound (nginx's
//! `lingering_close`). A connection closed as idle, or by the client, is not drained.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::clock::now_millis;
use crate::conn::Activity;

/// A lingering close ends this long after it began at the latest.
pub const LINGER_TIME: Duration = Duration::from_secs(10);
/// A lingering close ends when the client has sent nothing for this long.
pub const LINGER_QUIET: Duration = Duration::from_secs(2);
/// A lingering close discards beyond the body limit at most this much (an over-limit upload's
/// `413` should reach its client too).
pub const LINGER_SLACK: u64 = 1 << 20;
/// Bytes discarded in one poll before yielding to the connection's other tasks.
const LINGER_CHUNK: usize = 64 * 1024;
/// The most bytes a sniffed prefix holds: an HTTP/2 connection preface.
pub const PREFIX_LEN: usize = 24;

/// A client socket watched for the connection's [`Activity`].
pub struct Watched<I> {
    io: I,
    prefix: [u8; PREFIX_LEN],
    prefix_at: usize,
    prefix_len: usize,
    activity: Arc<Activity>,
    /// HTTP/1.1: bytes between requests start a request head.
    heads: bool,
    /// The client ended its input.
    eof: bool,
    /// How many bytes a lingering close may discard.
    linger_bytes: u64,
    write_shut: bool,
    linger: Option<Linger>,
}

struct Linger {
    /// Fires at the earlier of the overall bound and the quiet bound.
    sleep: Pin<Box<Sleep>>,
    until: tokio::time::Instant,
    left: u64,
}

impl<I> Watched<I> {
    /// Wraps `io`, serving `prefix` (bytes already read from it) first.
    pub fn new(
        io: I,
        prefix: &[u8],
        activity: Arc<Activity>,
        heads: bool,
        linger_bytes: u64,
    ) -> Watched<I> {
        let mut buf = [0u8; PREFIX_LEN];
        let len = prefix.len().min(PREFIX_LEN);
        buf[..len].copy_from_slice(&prefix[..len]);
        Watched {
            io,
            prefix: buf,
            prefix_at: 0,
            prefix_len: len,
            activity,
            heads,
            eof: false,
            linger_bytes,
            write_shut: false,
            linger: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix_at < this.prefix_len {
            let rest = &this.prefix[this.prefix_at..this.prefix_len];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_at += n;
            return Poll::Ready(Ok(()));
        }
        let (before, room) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            if read == 0 && room > 0 {
                this.eof = true;
            } else if read > 0 && this.heads {
                this.activity.bytes_arrived(now_millis);
            }
        }
        polled
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Shuts the writing half down, then (unless the client already ended its input or the
    /// connection closes as idle) reads and discards until the client stops sending.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_shut {
            std::task::ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.write_shut = true;
        }
        if this.linger.is_none() {
            // Decided once: what the connection's checks do while it lingers (an idle close,
            // say) does not end the lingering early.
            if this.eof || this.activity.is_closing_idle() {
                return Poll::Ready(Ok(()));
            }
            // The bytes hyper read of an abandoned body before closing started no request
            // head: the header timeout must not cut the lingering short.
            this.heads = false;
            this.activity.clear_head();
        }
        let linger_bytes = this.linger_bytes;
        let linger = this.linger.get_or_insert_with(|| {
            let now = tokio::time::Instant::now();
            let until = crate::clock::deadline(now, LINGER_TIME);
            Linger {
                sleep: Box::pin(tokio::time::sleep_until(
                    crate::clock::deadline(now, LINGER_QUIET).min(until),
                )),
                until,
                left: linger_bytes,
            }
        });
        let mut scratch = [0u8; 8192];
        let mut this_poll = 0usize;
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    linger.left = linger.left.saturating_sub(n as u64);
                    if linger.left == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let quiet = crate::clock::deadline(tokio::time::Instant::now(), LINGER_QUIET);
                    linger.sleep.as_mut().reset(quiet.min(linger.until));
                    this_poll += n;
                    if this_poll >= LINGER_CHUNK {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                // A reset by the client ends the close as well as its end of input does.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    return match linger.sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
