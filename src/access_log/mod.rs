//! The access log (`[server.access_log]`): one line per proxied request, written when its
//! response has been sent or its client went away. The README's "Access log" section lists
//! the fields of both formats.
//!
//! How a request is recorded, at little cost and without threading a parameter through the
//! proxy:
//! - The server begins an [`Entry`] when a request arrives, only while the log is on (off, a
//!   request pays one atomic load and a branch), and awaits the proxy's future through
//!   [`recording`], which makes the entry that future's task-local value. The proxy path
//!   records what only it knows with one-line hooks ([`answered`], [`attempt`],
//!   [`body_read`], [`guard`], [`local_answer`], [`request_id`]); outside a recording they
//!   find no entry and do nothing. The entry is owned by the request's future: no lock, no
//!   allocation.
//! - The entry then travels with the response body, which counts the bytes sent
//!   ([`Entry::sent`]). Its line is written when it drops: after the last byte, or when the
//!   client went away (the body, or the proxy's future, dropped unfinished: `aborted`, and
//!   status 499 when no answer had begun).
//! - [`sink`] takes the line: formatted ([`format`]) into a per-thread buffer, handed to a
//!   writer thread in batches; a writer that falls behind costs lines, never a request's time.
//!
//! Nothing that could carry a credential is logged: the path is written without its query
//! string, and no header but `x-request-id` is.

mod format;
mod sink;

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Buf;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode, Version};
use http_body::Frame;

use crate::backend::Backend;
use crate::metrics::GuardOutcome;
use format::Line;
pub use sink::{flush_thread, AccessLog, AccessLogError, FLUSH_EVERY};

/// The header that names a request in the log (the proxy generates one when absent).
const REQUEST_ID: &str = "x-request-id";

/// The status logged for a request whose client went away before any answer: nginx's 499.
const CLIENT_CLOSED: u16 = 499;

/// One request's line in the making.
#[derive(Debug)]
pub struct Entry {
    started: Instant,
    client: SocketAddr,
    method: Method,
    /// The query string is never written (push APIs carry keys there).
    path: Option<PathAndQuery>,
    version: Version,
    request_id: Option<HeaderValue>,
    /// The backend whose answer the client gets, and how long its answer's head took.
    answer: Option<(Arc<Backend>, Duration)>,
    guard: Option<GuardOutcome>,
    /// Requests sent upstream: the first, connect retries, second-opinion replays.
    attempts: u32,
    /// Body bytes read while buffering the request.
    body_read: u64,
    /// Body bytes streamed upstream (a body too large to buffer), counted as they go.
    streamed: Option<Arc<AtomicU64>>,
    status: Option<StatusCode>,
    bytes_out: u64,
    /// Time from arrival until the response's last byte was handed over; None until then.
    done: Option<Duration>,
}

impl Entry {
    /// Begins the line of `req`, from `client`.
    pub fn begin<B>(req: &Request<B>, client: SocketAddr) -> Entry {
        Entry {
            started: Instant::now(),
            client,
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            request_id: req.headers().get(REQUEST_ID).cloned(),
            answer: None,
            guard: None,
            attempts: 0,
            body_read: 0,
            streamed: None,
            status: None,
            bytes_out: 0,
            done: None,
        }
    }

    /// The response begins with `status`; `body_done` when it has no body to send (hyper
    /// sends none, and may never poll it, for a `HEAD` request either).
    pub fn responded(&mut self, status: StatusCode, body_done: bool) {
        self.status = Some(status);
        if body_done || self.method == Method::HEAD {
            self.finish();
        }
    }

    /// Counts what one poll of the response body gave (`end`: the body says it is complete).
    /// The end, or an error (the worker's body broke: the client was not the one to leave),
    /// completes the response.
    pub fn sent<D: Buf, E>(&mut self, polled: &Poll<Option<Result<Frame<D>, E>>>, end: bool) {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out = self.bytes_out.saturating_add(data.remaining() as u64);
                }
                if end {
                    self.finish();
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
    }

    fn finish(&mut self) {
        if self.done.is_none() {
            self.done = Some(self.started.elapsed());
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let aborted = self.done.is_none();
        let streamed = self
            .streamed
            .as_ref()
            .map_or(0, |s| s.load(Ordering::Relaxed));
        let line = Line {
            time: SystemTime::now(),
            client: self.client,
            method: self.method.as_str(),
            path: self.path.as_ref().map_or(b"", |p| p.path().as_bytes()),
            version: self.version,
            status: self.status.map_or(CLIENT_CLOSED, |s| s.as_u16()),
            bytes_in: self.body_read.saturating_add(streamed),
            bytes_out: self.bytes_out,
            duration: self.done.unwrap_or_else(|| self.started.elapsed()),
            upstream: self.answer.as_ref().map(|a| a.1),
            backend: self.answer.as_ref().map(|(b, _)| (&*b.pool, &*b.name)),
            guard: self.guard,
            retries: self.attempts.saturating_sub(1),
            request_id: self.request_id.as_ref().map(HeaderValue::as_bytes),
            aborted,
        };
        sink::emit(&line);
    }
}

tokio::task_local! {
    /// The entry of the request whose future is running (see the module's doc).
    static RECORDING: RefCell<Entry>;
}

/// Runs `fut` (the proxy's handling of one request) with `entry` as its task-local entry, so
/// that the hooks below record into it; returns the entry with the output. Without an entry
/// (the log is off) it only awaits `fut`. Should the future be dropped unfinished (the client
/// went away), the entry drops with it and writes its line.
pub async fn recording<F: Future>(entry: Option<Entry>, fut: F) -> (F::Output, Option<Entry>) {
    let Some(entry) = entry else {
        return (fut.await, None);
    };
    let mut scoped = std::pin::pin!(RECORDING.scope(RefCell::new(entry), fut));
    let out = scoped.as_mut().await;
    (out, scoped.take_value().map(RefCell::into_inner))
}

/// Applies `f` to the running request's entry, if it has one.
fn record(f: impl FnOnce(&mut Entry)) {
    let _ = RECORDING.try_with(|entry| {
        if let Ok(mut entry) = entry.try_borrow_mut() {
            f(&mut entry);
        }
    });
}

/// The request id the proxy generated for a request that came without one.
pub fn request_id(id: &HeaderValue) {
    record(|e| {
        if e.request_id.is_none() {
            e.request_id = Some(id.clone());
        }
    });
}

/// `n` body bytes were read from the client.
pub fn body_read(n: usize) {
    record(|e| e.body_read = e.body_read.saturating_add(n as u64));
}

/// A counter of the body bytes that stream upstream from here on (a body too large to
/// buffer), when the request is recorded.
pub fn body_streamed() -> Option<Arc<AtomicU64>> {
    let mut counter = None;
    record(|e| counter = Some(e.streamed.get_or_insert_with(Arc::default).clone()));
    counter
}

/// The request is sent to a backend (again).
pub fn attempt() {
    record(|e| e.attempts = e.attempts.saturating_add(1));
}

/// `backend`'s answer, sent at `sent_at` and whose head has just come, is the one the client
/// gets unless a later answer or syncgate's own replaces it.
pub fn answered(backend: &Arc<Backend>, sent_at: Instant) {
    record(|e| e.answer = Some((backend.clone(), sent_at.elapsed())));
}

/// syncgate answers the client itself (an error, a `503` in place of an unconfirmed answer):
/// no backend's answer reaches it.
pub fn local_answer() {
    record(|e| e.answer = None);
}

/// The guard's outcome for a guarded answer.
pub fn guard(outcome: GuardOutcome) {
    record(|e| e.guard = Some(outcome));
}
