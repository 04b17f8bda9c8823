//! One upstream connection and one exchange on it, driven inside the request's own task: the
//! request is written and the answer head read by [`Conn::exchange`], the answer body by
//! [`Decoder`] (under [`Pooled`](super::Pooled)). No connection task, no channel, no wake-up
//! of another task.
//!
//! Writing and reading overlap: a worker may answer before it has read the whole body (a
//! `413`, an early error) and stop reading; the answer is taken as soon as its head arrives,
//! and the connection is then not reused (the rest of the request was never sent).

use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

use super::codec::{self, chunk_line, Chunked, Decoded, Framing, Head, Parsed, ReqFraming};
use super::Outgoing;
use crate::body::{BodyError, ReqBody};
use crate::gather;

/// Room kept free in the read buffer before a read.
const READ_CHUNK: usize = 8 * 1024;

/// Why an exchange with a worker broke once something was sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The worker closed the connection before its answer was complete.
    #[error("connection closed before the answer was complete")]
    Closed,
    /// A socket error.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The answer is not valid HTTP/1.1.
    #[error(transparent)]
    Parse(#[from] codec::ParseError),
    /// The request body failed (the client's stream broke, or it grew past the limit).
    #[error("request body failed")]
    Body(#[source] BodyError),
    /// The request body ended before its declared length.
    #[error("request body shorter than its content-length")]
    ShortBody,
    /// The answer's body sent nothing for `request_timeout`.
    #[error("answer body stalled: nothing read for {0:?}")]
    Stalled(std::time::Duration),
}

/// The socket to a worker, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: the session state is large, and most upstreams are plain).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream HTTP/1.1 connection between exchanges: the socket, and what was read past
/// the last answer (nothing, on a connection fit for reuse).
#[derive(Debug)]
pub struct Conn {
    io: Stream,
    rbuf: BytesMut,
}

/// How an exchange failed.
#[derive(Debug)]
pub enum Failed {
    /// Not a byte of the request reached the socket: the request is untouched, and may go
    /// elsewhere.
    NotSent(io::Error),
    /// The exchange broke after (part of) the request was sent.
    Broken(UpstreamError),
}

/// What is being written of the request.
enum Out {
    /// The head, then an in-memory body, from this offset into both.
    Head { at: usize },
    /// The head is out; the body streams from the request, chunked or with this many bytes
    /// left.
    Streaming { left: Option<u64> },
    /// Pieces of a streamed body (a chunk's size line, data and CRLF; or the last chunk)
    /// from an offset; then streaming goes on (`then`) or the request is complete.
    Pieces {
        pieces: Box<[Bytes; 3]>,
        at: usize,
        then: Option<Option<u64>>,
    },
    /// Everything is written; what TLS still holds must be flushed (tokio-rustls accepts
    /// bytes it has not written yet, and only a write or a flush sends them).
    Flush,
    /// Everything is written and flushed.
    Done,
}

impl Conn {
    /// A connection over `io`.
    pub fn new(io: Stream) -> Conn {
        Conn {
            io,
            rbuf: BytesMut::new(),
        }
    }

    /// Whether the idle connection is still usable: nothing arrived on it (the worker did not
    /// close it, or say anything unasked). Polls the socket once without waiting; no system
    /// call when the socket is known to be drained.
    pub fn is_usable(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Sends `req` and reads the answer's head. `Failed::NotSent` says that not a byte of it
    /// was written (a dead pooled connection): `req` is untouched and may go elsewhere. After
    /// any other outcome its body has been (partly) read. Borrowed, not moved: every level
    /// of the request's future that took it by value kept its own copy.
    pub fn exchange<'a>(
        &'a mut self,
        req: &'a mut Outgoing,
    ) -> impl Future<Output = Result<Head, Failed>> + 'a {
        let mut out = Out::Head { at: 0 };
        let mut sent = false;
        let mut complete = false;
        // A write that failed once something was sent: the worker may have answered and
        // closed (a `413` to a body it would not read), so its answer is still looked for.
        let mut write_failed: Option<UpstreamError> = None;
        // One closure that owns the exchange's state: no async block around it (its future
        // would hold a reference to each piece besides the pieces).
        poll_fn(move |cx| {
            // Write what can be written, then look for the answer: the worker may answer
            // early, and must not wait for a body it does not read.
            if !complete {
                match self.poll_send(cx, &mut out, req, &mut sent) {
                    Poll::Ready(Ok(())) => complete = true,
                    Poll::Ready(Err(UpstreamError::Io(e))) if !sent => {
                        return Poll::Ready(Err(Failed::NotSent(e)))
                    }
                    // The client's body failed or broke its length: the worker waits for bytes
                    // that will not come, so no answer is waited for.
                    Poll::Ready(Err(e)) if !sent => return Poll::Ready(Err(Failed::Broken(e))),
                    Poll::Ready(Err(e @ (UpstreamError::Body(_) | UpstreamError::ShortBody))) => {
                        return Poll::Ready(Err(Failed::Broken(e)))
                    }
                    Poll::Ready(Err(e)) => {
                        complete = true;
                        write_failed = Some(e);
                    }
                    Poll::Pending => {}
                }
            }
            if !sent {
                return Poll::Pending;
            }
            match ready!(self.poll_head(cx, req.head_request)) {
                Ok(mut head) => {
                    if !complete || write_failed.is_some() {
                        // Answered before the whole request went: the connection is out of step.
                        head.keep_alive = false;
                    }
                    Poll::Ready(Ok(head))
                }
                Err(e) => Poll::Ready(Err(Failed::Broken(write_failed.take().unwrap_or(e)))),
            }
        })
    }

    /// Writes the request: the head, then its body. `sent` turns true once a byte is written.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Out,
        req: &mut Outgoing,
        sent: &mut bool,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            match out {
                Out::Done => return Poll::Ready(Ok(())),
                Out::Flush => {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    *out = Out::Done;
                }
                Out::Head { at } => {
                    let head = req.head.get(*at..).unwrap_or_default();
                    let body = match &req.body {
                        ReqBody::Full(Some(b)) => b.get(at.saturating_sub(req.head.len())..),
                        _ => None,
                    }
                    .unwrap_or_default();
                    if head.is_empty() && body.is_empty() {
                        *out = match (req.framing, &req.body) {
                            (ReqFraming::Chunked, _) => Out::Streaming { left: None },
                            (ReqFraming::Length(n), ReqBody::Stream(_)) => {
                                Out::Streaming { left: Some(n) }
                            }
                            _ => Out::Flush,
                        };
                        continue;
                    }
                    let slices = [IoSlice::new(head), IoSlice::new(body)];
                    let n = ready!(gather::poll_write(Pin::new(&mut self.io), cx, &slices))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    *sent = true;
                    *at += n;
                }
                // The declared length is complete: the client's end of stream may come in a
                // later (empty) frame, or after trailers, and is not waited for.
                Out::Streaming { left: Some(0) } => *out = Out::Flush,
                Out::Streaming { left } => {
                    // A body read from is spent: the request can no longer go elsewhere (the
                    // head before it always has bytes, so this is already true).
                    *sent = true;
                    let frame = match Pin::new(&mut req.body).poll_frame(cx) {
                        Poll::Ready(frame) => frame,
                        Poll::Pending => {
                            // Nothing more to write for now: what TLS holds goes out meanwhile.
                            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                            return Poll::Pending;
                        }
                    };
                    let chunked = left.is_none();
                    let data = match frame {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) if data.is_empty() => continue,
                            Ok(data) => data,
                            // Request trailers are not forwarded.
                            Err(_) => continue,
                        },
                        Some(Err(e)) => return Poll::Ready(Err(UpstreamError::Body(e))),
                        None if left.is_some_and(|l| l > 0) => {
                            return Poll::Ready(Err(UpstreamError::ShortBody))
                        }
                        None if chunked => {
                            let last = Bytes::from_static(b"0\r\n\r\n");
                            *out = Out::Pieces {
                                pieces: Box::new([last, Bytes::new(), Bytes::new()]),
                                at: 0,
                                then: None,
                            };
                            continue;
                        }
                        None => {
                            *out = Out::Flush;
                            continue;
                        }
                    };
                    if let Some(l) = left {
                        // More than the declared length (the client's stream checks it too).
                        let len = data.len() as u64;
                        if len > *l {
                            return Poll::Ready(Err(UpstreamError::ShortBody));
                        }
                        *l -= len;
                    }
                    let pieces = if chunked {
                        [chunk_line(data.len()), data, Bytes::from_static(b"\r\n")]
                    } else {
                        [data, Bytes::new(), Bytes::new()]
                    };
                    *out = Out::Pieces {
                        pieces: Box::new(pieces),
                        at: 0,
                        then: Some(*left),
                    };
                }
                Out::Pieces { pieces, at, then } => {
                    loop {
                        let mut skip = *at;
                        let mut slices = [IoSlice::new(&[]); 3];
                        for (slice, piece) in slices.iter_mut().zip(pieces.iter()) {
                            let from = skip.min(piece.len());
                            skip -= from;
                            *slice = IoSlice::new(&piece[from..]);
                        }
                        if slices.iter().all(|s| s.is_empty()) {
                            break;
                        }
                        let n = ready!(gather::poll_write(Pin::new(&mut self.io), cx, &slices))?;
                        if n == 0 {
                            return Poll::Ready(Err(
                                io::Error::from(io::ErrorKind::WriteZero).into()
                            ));
                        }
                        *at += n;
                    }
                    *out = match *then {
                        Some(left) => Out::Streaming { left },
                        None => Out::Flush,
                    };
                }
            }
        }
    }

    /// Reads until a final answer head is complete.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<Head, UpstreamError>> {
        loop {
            if !self.rbuf.is_empty() {
                match codec::parse_head(&mut self.rbuf, head_request)? {
                    Parsed::Final(head) => return Poll::Ready(Ok(head)),
                    Parsed::Interim => continue,
                    Parsed::Partial => {}
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(UpstreamError::Closed));
            }
        }
    }

    /// Reads what the socket has into the read buffer; 0 at the end of input.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }
}

/// Where an answer body stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes left.
    Length(u64),
    /// Chunked.
    Chunked(Chunked),
    /// Until the worker closes.
    Close,
    /// Read to its end.
    Done,
}

impl Decoder {
    /// The decoder of a body framed so.
    pub fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Empty | Framing::Length(0) => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunked::default()),
            Framing::Close => Decoder::Close,
        }
    }

    /// Whether the body was read to its end.
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// The exact length left, when known.
    pub fn exact(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body from `conn`.
    pub fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        loop {
            match self {
                Decoder::Done => return Poll::Ready(None),
                Decoder::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.rbuf.len());
                        *left -= n as u64;
                        if *left == 0 {
                            *self = Decoder::Done;
                        }
                        return Poll::Ready(Some(Ok(conn.rbuf.split_to(n).freeze())));
                    }
                }
                Decoder::Chunked(chunked) => match chunked.decode(&mut conn.rbuf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::Done) => {
                        *self = Decoder::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                Decoder::Close => {
                    if !conn.rbuf.is_empty() {
                        let n = conn.rbuf.len();
                        return Poll::Ready(Some(Ok(conn.rbuf.split_to(n).freeze())));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
                Ok(0) if *self == Decoder::Close => {
                    *self = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(UpstreamError::Closed))),
                Ok(_) => {}
            }
        }
    }
}

/// Reads a whole answer body from `conn`, failing past `limit` bytes.
pub async fn read_to_end(
    conn: &mut Conn,
    mut decoder: Decoder,
    limit: usize,
) -> Result<Bytes, String> {
    let mut body = BytesMut::new();
    while let Some(data) = poll_fn(|cx| decoder.poll_data(conn, cx)).await {
        let data = data.map_err(|e| e.to_string())?;
        if body.len() + data.len() > limit {
            return Err(format!("answer body larger than {limit} bytes"));
        }
        body.extend_from_slice(&data);
    }
    Ok(body.freeze())
}
