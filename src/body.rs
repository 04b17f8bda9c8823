//! The request body on its way upstream.
//!
//! An enum instead of a boxed trait object: no allocation for the common body (kept in
//! memory), and the replayable form (`Full`) is a cheap `Bytes` clone. A streamed body (one
//! larger than the replay buffer, rare) is boxed: the request's future holds two
//! [`ReqBody`]s (the request and its copy for a second opinion), 40 bytes each instead of 96.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// Error of a request body: the client's stream failed or exceeded `max_request_body`.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body grew past the limit (chunked bodies are only known to be too large late).
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// Reading from the client failed.
    #[error("client body: {0}")]
    Client(#[from] hyper::Error),
}

/// A request body on its way upstream.
#[derive(Debug)]
pub enum ReqBody {
    /// Kept in memory; can be replayed (`Bytes` clones share the buffer).
    Full(Option<Bytes>),
    /// Streamed from the client, with a byte limit.
    Stream(Box<Streamed>),
}

/// A body streamed from the client.
#[derive(Debug)]
pub struct Streamed {
    /// Bytes already read from the client (a body that outgrew the replay buffer).
    prefix: Option<Bytes>,
    /// The client's body.
    inner: Incoming,
    /// Bytes still allowed.
    remaining: u64,
    /// The limit, for the error message.
    limit: u64,
    /// Counts the bytes read from `inner`, for the access log.
    counted: Option<Arc<AtomicU64>>,
    /// `inner` has ended (a chunked body's end is not in its size hint).
    ended: bool,
}

impl ReqBody {
    /// An empty, replayable body.
    pub fn empty() -> ReqBody {
        ReqBody::Full(None)
    }

    /// A replayable body.
    pub fn full(bytes: Bytes) -> ReqBody {
        ReqBody::Full(if bytes.is_empty() { None } else { Some(bytes) })
    }

    /// A streamed body limited to `limit` bytes in all, of which `prefix` was already read;
    /// the bytes read from `inner` from now on are added to `counted`.
    pub fn stream(
        prefix: Option<Bytes>,
        inner: Incoming,
        limit: u64,
        counted: Option<Arc<AtomicU64>>,
    ) -> ReqBody {
        let used = prefix.as_ref().map_or(0, |p| p.len() as u64);
        ReqBody::Stream(Box::new(Streamed {
            prefix,
            inner,
            remaining: limit.saturating_sub(used),
            limit,
            counted,
            ended: false,
        }))
    }

    /// Whether the client's body has been read to its end: one kept in memory was; a
    /// streamed one once its last byte came.
    pub fn client_finished(&self) -> bool {
        match self {
            ReqBody::Full(_) => true,
            ReqBody::Stream(s) => s.ended || s.inner.is_end_stream(),
        }
    }

    /// The bytes of a replayable body (None for a streamed one).
    pub fn replayable(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Full(b) => Some(ReqBody::Full(b.clone())),
            ReqBody::Stream(_) => None,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(streamed) => {
                let Streamed {
                    prefix,
                    inner,
                    remaining,
                    limit,
                    counted,
                    ended,
                } = &mut **streamed;
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if len > *remaining {
                                return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                            }
                            *remaining -= len;
                            if let Some(c) = counted {
                                c.fetch_add(len, Ordering::Relaxed);
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => {
                        *ended = true;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(s) => s.prefix.is_none() && self.client_finished(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream(s) => {
                let p = s.prefix.as_ref().map_or(0, |p| p.len() as u64);
                let h = s.inner.size_hint();
                let mut out = SizeHint::new();
                // Saturating: a client's Content-Length may be anything up to u64::MAX.
                out.set_lower(h.lower().saturating_add(p));
                if let Some(u) = h.upper() {
                    out.set_upper(u.saturating_add(p));
                }
                out
            }
        }
    }
}
