//! The access log (`[server.access_log]`): one line per proxied request, written when its
//! response has been sent or its client went away. The README's "Access log" section lists
//! the fields of both formats.
//!
//! How a request is recorded, at little cost:
//! - The server begins an [`Entry`] when a request arrives, only while the log is on (off, a
//!   request pays one atomic load and a branch, and carries [`Entry::off`]), and hands it to
//!   the proxy, which owns it for the request's life and passes it down by `&mut` to the
//!   steps that know something the line says ([`Entry::attempt`], [`Entry::answered`],
//!   [`Entry::body_read`], ...). Explicit, not a task-local: no swap on every poll of the
//!   request's future, no thread-local lookup per record, and the compiler sees every write.
//!   The entry's [`record`](mod@record) is boxed, in a box the thread reuses: no
//!   allocation in the common case.
//! - The proxy hands the entry back with its response, and it travels with the response
//!   body, which counts the bytes sent ([`Entry::sent`]). Its line is written when it drops:
//!   after the last byte, or when the client went away (the body, or the proxy's future,
//!   dropped unfinished: `aborted`, and status 499 when no answer had begun).
//! - [`sink`] keeps the record until its thread has eight, then formats their lines
//!   ([`format`](mod@format)) into its batch of text and keeps the boxes for the thread's
//!   next requests; every 64 lines the thread hands the text to the [`writer`] thread (one
//!   lock per 64 requests, to take a buffer the writer gave back), which writes it to its
//!   [`dest`]ination. A writer that falls behind costs lines, never a request's time.
//!
//! Nothing that could carry a credential is logged: the path is written without its query
//! string, and no header but `x-request-id` is.
//!
//! What it costs, measured: docs/benchmarks.md, "The access log".

mod dest;
mod format;
mod record;
mod sink;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Buf;
use http::{HeaderValue, Request, StatusCode};
use http_body::Frame;

use crate::backend::Backend;
use crate::metrics::GuardOutcome;
use record::Record;
pub use sink::{flush_thread, AccessLog, AccessLogError, FLUSH_EVERY};

/// One request's line in the making, formatted into its thread's batch soon after it drops.
///
/// Boxed: it moves with the request's future and then with its response body, a pointer in
/// place of 312 bytes; while the log is off it is `None`. The box is one its thread kept from
/// an earlier request ([`sink`]), filled in place (a new one only when none is left): with
/// many requests in flight `malloc` would otherwise leave its fast per-thread cache for
/// every one.
#[derive(Debug)]
pub struct Entry(Option<Box<Record>>);

impl Entry {
    /// Applies `f` to the fields, while the log is on.
    fn record(&mut self, f: impl FnOnce(&mut Record)) {
        if let Some(fields) = self.0.as_deref_mut() {
            f(fields);
        }
    }

    /// The entry of a request while the log is off: records nothing, writes nothing.
    pub fn off() -> Entry {
        Entry(None)
    }

    /// The request's `x-request-id`: the client's, or the one the proxy generated.
    pub fn request_id(&mut self, id: &HeaderValue) {
        self.record(|f| f.request_id(id));
    }

    /// `n` body bytes were read from the client.
    pub fn body_read(&mut self, n: usize) {
        self.record(|f| f.body_read = f.body_read.saturating_add(n as u64));
    }

    /// A counter of the body bytes that stream upstream from here on (a body too large to
    /// buffer), when the request is recorded.
    pub fn body_streamed(&mut self) -> Option<Arc<AtomicU64>> {
        let f = self.0.as_deref_mut()?;
        Some(f.streamed())
    }

    /// The request is sent to a backend (again).
    pub fn attempt(&mut self) {
        self.record(|f| f.attempts = f.attempts.saturating_add(1));
    }

    /// `backend`'s answer, whose head came `took` after the request was sent, is the one the
    /// client gets unless a later answer or syncgate's own replaces it.
    pub fn answered(&mut self, backend: &Arc<Backend>, took: Duration) {
        self.record(|f| f.answered(backend, took));
    }

    /// syncgate answers the client itself (a `504`, a `503` in place of an unconfirmed
    /// answer): no backend's answer reaches it.
    pub fn local_answer(&mut self) {
        self.record(Record::local_answer);
    }

    /// The guard's outcome for a guarded answer.
    pub fn guard(&mut self, outcome: GuardOutcome) {
        self.record(|f| f.guard = Some(outcome));
    }

    /// Begins the line of `req`, from `client`, which arrived at `started`.
    pub fn begin<B>(req: &Request<B>, client: SocketAddr, started: Instant) -> Entry {
        let (method, uri, version) = (req.method(), req.uri(), req.version());
        match sink::spare() {
            Some(mut r) => {
                r.refill(started, client, method, uri, version);
                Entry(Some(r))
            }
            None => Entry(Some(Box::new(Record::new(
                started, client, method, uri, version,
            )))),
        }
    }

    /// The response begins with `status`; `body_done` when it has no body to send (hyper
    /// sends none, and may never poll it, for a `HEAD` request either).
    pub fn responded(&mut self, status: StatusCode, body_done: bool) {
        let Some(f) = self.0.as_deref_mut() else {
            return;
        };
        f.status = Some(status.as_u16());
        if body_done || f.is_head() {
            // Complete with its head, microseconds after the proxy read the clock for it.
            let at = f.head_at.take();
            f.finish(at);
        }
    }

    /// The proxy has the response's head ready at `at`.
    pub fn head_ready(&mut self, at: Instant) {
        self.record(|f| f.head_at = Some(at));
    }

    /// Counts what one poll of the response body gave (`end`: the body says it is complete).
    /// The end, or an error (the worker's body broke: the client was not the one to leave),
    /// completes the response.
    pub fn sent<D: Buf, E>(&mut self, polled: &Poll<Option<Result<Frame<D>, E>>>, end: bool) {
        let Some(f) = self.0.as_deref_mut() else {
            return;
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    f.bytes_out = f.bytes_out.saturating_add(data.remaining() as u64);
                }
                if end {
                    f.finish(None);
                }
            }
            Poll::Ready(None | Some(Err(_))) => f.finish(None),
            Poll::Pending => {}
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(mut record) = self.0.take() {
            record.close();
            sink::emit(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// An entry whose response began with `status` at `head_at` (`body_done`: with no body).
    fn entry(head_at: Instant, status: StatusCode, body_done: bool) -> Entry {
        let mut e = Entry::begin(
            &Request::new(()),
            "127.0.0.1:1".parse().expect("addr"),
            head_at,
        );
        e.head_ready(head_at);
        e.responded(status, body_done);
        e
    }

    fn data(n: usize) -> Poll<Option<Result<Frame<Bytes>, ()>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }

    fn done(e: &Entry) -> Option<Instant> {
        e.0.as_ref().and_then(|r| r.done)
    }

    #[test]
    fn a_response_completes_when_its_body_ends_not_with_its_head() {
        // A second ago: a completion read from the clock is told from it.
        let head = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .expect("an instant a second ago");
        let later = head + Duration::from_secs(1);

        // Even a body that ends in its first frame: hyper may poll it long after the head
        // (HTTP/2 flow control, a write buffer to flush first).
        let mut whole = entry(head, StatusCode::OK, false);
        whole.sent(&data(2), true);
        assert!(done(&whole).is_some_and(|d| d >= later));

        let mut two_frames = entry(head, StatusCode::OK, false);
        two_frames.sent(&data(2), false);
        assert_eq!(done(&two_frames), None);
        two_frames.sent(&data(2), true);
        assert!(done(&two_frames).is_some_and(|d| d >= later));
        assert_eq!(two_frames.0.as_ref().map(|r| r.bytes_out), Some(4));

        // A body complete with its head completes at the proxy's reading for the head.
        let empty = entry(head, StatusCode::NO_CONTENT, true);
        assert_eq!(done(&empty), Some(head));
    }
}
