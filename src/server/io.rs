//! The client socket as hyper sees it ([`Watched`]): the bytes the protocol sniffing already
//! read are served first (and so are the bytes read while a keep-alive connection was parked,
//! or left in hyper's buffer when it was); on HTTP/1.1 the first byte of a request head is noted in the
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

use bytes::{Buf, Bytes};
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
    /// Served after `prefix`: what hyper had read but not parsed when it let the socket go.
    rest: Bytes,
    activity: Arc<Activity>,
    /// HTTP/1.1: bytes between requests start a request head.
    heads: bool,
    /// The client ended its input.
    eof: bool,
    /// The last write or flush was pending, or shutting down began (mirrored in the activity
    /// on changes).
    output_blocked: bool,
    /// Shutting down began: `output_blocked` stays set.
    shutting: bool,
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
            rest: Bytes::new(),
            activity,
            heads,
            eof: false,
            output_blocked: false,
            shutting: false,
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
        // Every read hyper makes, of the socket or of bytes kept for it (see
        // `Activity::take_socket_read`).
        this.activity.note_socket_read();
        if this.prefix_at < this.prefix_len {
            let rest = &this.prefix[this.prefix_at..this.prefix_len];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.prefix_at += n;
            return Poll::Ready(Ok(()));
        }
        if !this.rest.is_empty() {
            let n = this.rest.len().min(buf.remaining());
            buf.put_slice(&this.rest[..n]);
            this.rest.advance(n);
            if this.rest.is_empty() {
                // Lets go of the buffer it was part of.
                this.rest = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let (before, room) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.note_read(buf.filled().len() - before, room);
        }
        polled
    }
}

impl<I> Watched<I> {
    /// Notes a read of `read` bytes into `room`: end of input, or the start of a request head.
    fn note_read(&mut self, read: usize, room: usize) {
        if read == 0 && room > 0 {
            self.eof = true;
        } else if read > 0 && self.heads {
            self.activity.bytes_arrived(now_millis);
        }
    }

    /// Notes whether a write or flush was left pending: hyper may then hold bytes not written
    /// yet (see `Activity::set_output_blocked`).
    fn note_output<T>(&mut self, polled: Poll<T>) -> Poll<T> {
        let pending = polled.is_pending();
        // hyper flushes before each poll of the shutdown: that does not unblock it.
        if !self.shutting && pending != self.output_blocked {
            self.output_blocked = pending;
            self.activity.set_output_blocked(pending);
        }
        polled
    }

    /// Whether the client ended its input.
    pub fn at_eof(&self) -> bool {
        self.eof
    }

    /// Whether the last write or flush was left pending, or shutting down began.
    pub fn output_blocked(&self) -> bool {
        self.output_blocked
    }

    /// Serves `bytes` (read from this socket by hyper, not parsed) before anything else. Empty
    /// lines before a request line are dropped (RFC 9112 2.2: some clients end a body with
    /// one); what is left begins a request head (a pipelined one), which `header_read_timeout`
    /// bounds from now. Whether anything is left.
    pub fn unread(&mut self, bytes: Bytes) -> bool {
        let blank = bytes
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let bytes = bytes.slice(blank..);
        if bytes.is_empty() {
            return self.has_unserved();
        }
        self.note_read(bytes.len(), 0);
        if self.has_unserved() {
            // hyper read `bytes` before the ones still unserved here: they go first.
            let mut all = bytes::BytesMut::from(&bytes[..]);
            all.extend_from_slice(&self.prefix[self.prefix_at..self.prefix_len]);
            all.extend_from_slice(&self.rest);
            self.prefix_at = self.prefix_len;
            self.rest = all.freeze();
        } else {
            self.rest = bytes;
        }
        true
    }

    /// Bytes read from the socket and not served yet.
    fn has_unserved(&self) -> bool {
        self.prefix_at < self.prefix_len || !self.rest.is_empty()
    }
}

impl<I: AsyncRead + Unpin> Watched<I> {
    /// Waits for the client's next bytes (at most [`PREFIX_LEN`]) and keeps them to be served
    /// first, as the sniffed ones were: how a parked connection learns that a request is
    /// coming without a buffer of hyper's. Empty lines are dropped as they come (RFC 9112
    /// 2.2: a client may end a body with one, late): they start no request. Ready with how
    /// many bytes there are (0: end of input); at once if bytes read earlier are unserved.
    pub fn poll_next_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.has_unserved() {
            return Poll::Ready(Ok(self.prefix_len - self.prefix_at + self.rest.len()));
        }
        // A client that sends nothing but empty lines gets a turn like any other.
        for _ in 0..LINGER_CHUNK / PREFIX_LEN {
            let mut rb = ReadBuf::new(&mut self.prefix);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            let blank = rb
                .filled()
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if n > 0 && blank == n {
                continue;
            }
            (self.prefix_at, self.prefix_len) = (blank, n);
            self.note_read(n - blank, PREFIX_LEN);
            return Poll::Ready(Ok(n - blank));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.note_output(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper's head and body, h2's frame head and data: one write when small.
        let polled = crate::gather::poll_write(Pin::new(&mut this.io), cx, bufs);
        this.note_output(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.note_output(polled)
    }

    /// Shuts the writing half down, then (unless the client already ended its input or the
    /// connection closes as idle) reads and discards until the client stops sending.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shutting {
            // A socket being closed is not one to park (see `Activity::set_output_blocked`).
            this.shutting = true;
            if !this.output_blocked {
                this.output_blocked = true;
                this.activity.set_output_blocked(true);
            }
        }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn poll_write(
        w: &mut Watched<tokio::io::DuplexStream>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(w).poll_write(&mut Context::from_waker(std::task::Waker::noop()), bytes)
    }

    #[tokio::test]
    async fn a_write_the_socket_does_not_take_blocks_parking_until_one_completes() {
        let activity = Arc::new(Activity::default());
        let (ours, mut client) = tokio::io::duplex(64);
        let mut w = Watched::new(ours, &[], activity.clone(), true, 0);
        assert!(matches!(
            poll_write(&mut w, &[b'a'; 64]),
            Poll::Ready(Ok(64))
        ));
        assert!(!activity.observe().output_blocked);
        // The client reads nothing: the next write waits, and hyper would hold its bytes.
        assert!(poll_write(&mut w, b"tail").is_pending());
        assert!(activity.observe().output_blocked);
        let mut got = [0u8; 64];
        client.read_exact(&mut got).await.unwrap();
        assert!(matches!(poll_write(&mut w, b"tail"), Poll::Ready(Ok(4))));
        assert!(!activity.observe().output_blocked);
    }

    #[tokio::test]
    async fn a_socket_being_shut_down_stays_blocked_whatever_is_flushed() {
        let activity = Arc::new(Activity::default());
        let (ours, mut client) = tokio::io::duplex(64);
        let mut w = Watched::new(ours, &[], activity.clone(), true, 0);
        // Closed as idle: no lingering, so the shutdown completes at once.
        activity.close_as_idle();
        w.shutdown().await.unwrap();
        assert!(activity.observe().output_blocked);
        // hyper flushes before each poll of a shutdown; that does not unblock it.
        w.flush().await.unwrap();
        assert!(activity.observe().output_blocked);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    /// Waits for a parked connection's next bytes, which must be all of `want`, then reads them
    /// back as hyper would.
    async fn next_then_read(w: &mut Watched<tokio::io::DuplexStream>, want: &[u8]) {
        let n = std::future::poll_fn(|cx| w.poll_next_bytes(cx))
            .await
            .unwrap();
        assert_eq!(n, want.len());
        let mut got = vec![0u8; n];
        w.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn bytes_unread_or_waited_for_are_served_first_and_start_a_head() {
        let activity = Arc::new(Activity::default());
        let (ours, mut client) = tokio::io::duplex(1024);
        let mut w = Watched::new(ours, &[], activity.clone(), true, 0);
        // Empty lines before a request line are no request: nothing to serve, no head.
        assert!(!w.unread(Bytes::from_static(b"\r\n")));
        assert_eq!(activity.observe().head_ms, 0);
        // What hyper had read and not parsed, given back when the connection parked.
        assert!(w.unread(Bytes::from_static(b"\r\nGET / HT")));
        assert_ne!(activity.observe().head_ms, 0, "a pipelined head started");
        activity.clear_head();
        client.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        let mut got = vec![0u8; 18];
        w.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");

        // A parked connection's wait: the client's next bytes are kept and served first.
        activity.clear_head();
        client
            .write_all(b"GET /next HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let n = std::future::poll_fn(|cx| w.poll_next_bytes(cx))
            .await
            .unwrap();
        assert!(n > 0 && n <= PREFIX_LEN);
        assert_ne!(activity.observe().head_ms, 0, "a head started");
        let mut got = vec![0u8; 22];
        w.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET /next HTTP/1.1\r\n\r\n");

        // Bytes given back while others are still unserved go first, and a wait for more
        // returns at once.
        let mut w = Watched::new(w.io, b"C", activity.clone(), true, 0);
        assert!(w.unread(Bytes::from_static(b"AB")));
        next_then_read(&mut w, b"ABC").await;

        // Empty lines that arrive while parked are no request.
        activity.clear_head();
        client.write_all(b"\r\n").await.unwrap();
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            std::future::poll_fn(|cx| w.poll_next_bytes(cx)),
        )
        .await;
        assert!(waited.is_err(), "still waiting");
        assert_eq!(activity.observe().head_ms, 0);
        client.write_all(b"\r\nGET").await.unwrap();
        next_then_read(&mut w, b"GET").await;

        // End of input while parked.
        drop(client);
        let n = std::future::poll_fn(|cx| w.poll_next_bytes(cx))
            .await
            .unwrap();
        assert_eq!(n, 0);
        assert!(w.at_eof());
    }
}
