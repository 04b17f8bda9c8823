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
//!   [`body_read`], [`body_streamed`], [`guard`], [`local_answer`], [`request_id`]); outside
//!   a recording they find no entry and do nothing. The entry is owned by the request's
//!   future, in a box the thread reuses: no lock, and no allocation in the common case.
//! - The entry then travels with the response body, which counts the bytes sent
//!   ([`Entry::sent`]). Its line is written when it drops: after the last byte, or when the
//!   client went away (the body, or the proxy's future, dropped unfinished: `aborted`, and
//!   status 499 when no answer had begun).
//! - [`sink`] takes the line as a compact binary [`record`](mod@record) into a per-thread
//!   buffer and hands the buffer to a writer thread in batches; the writer formats them
//!   ([`format`](mod@format)) and writes. A writer that falls behind costs lines, never a
//!   request's time.
//!
//! Nothing that could carry a credential is logged: the path is written without its query
//! string, and no header but `x-request-id` is.
//!
//! What it costs, measured (docs/benchmarks.md): some 1,000 instructions on the request's
//! thread and 1,500 on the writer's per line; formatting in the writer keeps a thousand-odd
//! instructions of formatting code out of the proxy threads' instruction cache.

mod format;
mod record;
mod sink;

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode, Version};
use http_body::Frame;
use tokio::task::futures::TaskLocalFuture;

use crate::backend::Backend;
use crate::metrics::GuardOutcome;
use format::Line;
pub use sink::{flush_thread, AccessLog, AccessLogError, FLUSH_EVERY};

/// The status logged for a request whose client went away before any answer: nginx's 499.
const CLIENT_CLOSED: u16 = 499;

/// One request's line in the making, written when it drops.
///
/// Boxed: it is moved into the request's task-local slot, which tokio swaps in and out of a
/// thread-local on every poll of the proxy's future, then into the response body; a pointer
/// moves in place of some 300 bytes each time. The box is taken from the thread's spares
/// ([`SPARES`]) and goes back there once its line is written: with many requests in flight
/// `malloc` would otherwise leave its fast per-thread cache for every one.
#[derive(Debug)]
pub struct Entry(Option<Box<Fields>>);

/// Boxes of written entries a thread keeps for its next requests, at most.
const SPARES: usize = 1024;

thread_local! {
    #[allow(clippy::vec_box, reason = "the boxes themselves are what is kept, to be handed out")]
    static SPARE: RefCell<Vec<Box<Fields>>> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug)]
struct Fields {
    started: Instant,
    client: SocketAddr,
    method: Method,
    /// The path without its query string, which is never written (push APIs carry keys there).
    path: Quoted<PathAndQuery>,
    version: Version,
    request_id: Option<Quoted<HeaderValue>>,
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
    /// When the response's last byte was handed over; None until then.
    done: Option<Instant>,
}

/// Bytes a line quotes from the request, copied when short (as a path and an id nearly always
/// are), else kept by reference: no reference counting per request, and no hold on the
/// buffers hyper reads requests into.
#[derive(Debug)]
enum Quoted<T> {
    Short(u8, [u8; SHORT]),
    Long(T),
}

/// The longest [`Quoted::Short`]: a path, a UUID or a generated id fit.
const SHORT: usize = 48;

impl<T> Quoted<T> {
    /// `bytes` copied if short, else `long()` kept.
    fn new(bytes: &[u8], long: impl FnOnce() -> T) -> Quoted<T> {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= SHORT => {
                let mut short = [0; SHORT];
                short[..bytes.len()].copy_from_slice(bytes);
                Quoted::Short(len, short)
            }
            _ => Quoted::Long(long()),
        }
    }

    /// The bytes quoted; `of` reads them from a kept `T`.
    fn bytes<'a>(&'a self, of: impl FnOnce(&'a T) -> &'a [u8]) -> &'a [u8] {
        match self {
            Quoted::Short(len, bytes) => &bytes[..usize::from(*len)],
            Quoted::Long(t) => of(t),
        }
    }
}

impl Entry {
    /// Begins the line of `req`, from `client`.
    pub fn begin<B>(req: &Request<B>, client: SocketAddr) -> Entry {
        let uri = req.uri();
        let path = Quoted::new(uri.path().as_bytes(), || {
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static(""))
        });
        let started = Instant::now();
        let spare = SPARE
            .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
            .ok()
            .flatten();
        let Some(mut f) = spare else {
            return Entry(Some(Box::new(Fields {
                started,
                client,
                method: req.method().clone(),
                path,
                version: req.version(),
                request_id: None,
                answer: None,
                guard: None,
                attempts: 0,
                body_read: 0,
                streamed: None,
                status: None,
                bytes_out: 0,
                done: None,
            })));
        };
        // Field by field: a box from the spares is filled in place, not copied over whole.
        // What it held was let go when it was put back (see `Drop`).
        f.started = started;
        f.client = client;
        f.method = req.method().clone();
        f.path = path;
        f.version = req.version();
        f.guard = None;
        f.attempts = 0;
        f.body_read = 0;
        f.status = None;
        f.bytes_out = 0;
        f.done = None;
        Entry(Some(f))
    }

    /// The response begins with `status`; `body_done` when it has no body to send (hyper
    /// sends none, and may never poll it, for a `HEAD` request either).
    pub fn responded(&mut self, status: StatusCode, body_done: bool) {
        let Some(f) = self.0.as_deref_mut() else {
            return;
        };
        f.status = Some(status);
        if body_done || f.method == Method::HEAD {
            f.finish();
        }
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
                    f.finish();
                }
            }
            Poll::Ready(None | Some(Err(_))) => f.finish(),
            Poll::Pending => {}
        }
    }
}

impl Fields {
    fn finish(&mut self) {
        if self.done.is_none() {
            self.done = Some(Instant::now());
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let Some(mut fields) = self.0.take() else {
            return;
        };
        fields.write();
        // What it holds (a backend, a long path or id) is let go now, not when the box is
        // next used.
        fields.answer = None;
        fields.streamed = None;
        fields.path = Quoted::Short(0, [0; SHORT]);
        fields.request_id = None;
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARES {
                    s.push(fields);
                }
            }
        });
    }
}

impl Fields {
    fn write(&self) {
        let aborted = self.done.is_none();
        let end = self.done.unwrap_or_else(Instant::now);
        let streamed = self
            .streamed
            .as_ref()
            .map_or(0, |s| s.load(Ordering::Relaxed));
        sink::emit(end, |time| Line {
            time,
            client: self.client,
            method: self.method.as_str().as_bytes(),
            path: self.path.bytes(|p| p.path().as_bytes()),
            version: self.version,
            status: self.status.map_or(CLIENT_CLOSED, |s| s.as_u16()),
            bytes_in: self.body_read.saturating_add(streamed),
            bytes_out: self.bytes_out,
            duration: end.saturating_duration_since(self.started),
            upstream: self.answer.as_ref().map(|a| a.1),
            backend: self
                .answer
                .as_ref()
                .map(|(b, _)| (b.pool.as_bytes(), b.name.as_bytes())),
            guard: self.guard,
            retries: self.attempts.saturating_sub(1),
            request_id: self
                .request_id
                .as_ref()
                .map(|id| id.bytes(HeaderValue::as_bytes)),
            aborted,
        });
    }
}

tokio::task_local! {
    /// The entry of the request whose future is running (see the module's doc).
    static RECORDING: RefCell<Entry>;
}

/// Runs `fut` (the proxy's handling of one request) with `entry` as its task-local entry, so
/// that the hooks below record into it; the future's output comes with the entry. Without an
/// entry (the log is off) it is `fut` itself. Should the future be dropped unfinished (the
/// client went away), the entry drops with it and writes its line.
pub fn recording<F: Future>(entry: Option<Entry>, fut: F) -> Recording<F> {
    match entry {
        Some(entry) => Recording::On {
            fut: RECORDING.scope(RefCell::new(entry), fut),
        },
        None => Recording::Off { fut },
    }
}

pin_project_lite::pin_project! {
    /// [`recording`]'s future. Written out rather than an `async fn`, whose state machine
    /// would keep the proxy's future twice (its argument, and the scope built from it): the
    /// server moves this future into place once per request, and its size is what it copies.
    #[project = RecordingProj]
    pub enum Recording<F> {
        /// The log is off.
        Off {
            #[pin]
            fut: F,
        },
        /// The entry is the future's task-local value.
        On {
            #[pin]
            fut: TaskLocalFuture<RefCell<Entry>, F>,
        },
    }
}

impl<F: Future> Future for Recording<F> {
    type Output = (F::Output, Option<Entry>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RecordingProj::Off { fut } => fut.poll(cx).map(|out| (out, None)),
            RecordingProj::On { mut fut } => {
                let out = std::task::ready!(fut.as_mut().poll(cx));
                Poll::Ready((out, fut.take_value().map(RefCell::into_inner)))
            }
        }
    }
}

/// Applies `f` to the running request's entry, if it has one.
fn record(f: impl FnOnce(&mut Fields)) {
    let _ = RECORDING.try_with(|entry| {
        if let Ok(mut entry) = entry.try_borrow_mut() {
            if let Some(fields) = entry.0.as_deref_mut() {
                f(fields);
            }
        }
    });
}

/// The request's `x-request-id`: the client's, or the one the proxy generated.
pub fn request_id(id: &HeaderValue) {
    record(|e| e.request_id = Some(Quoted::new(id.as_bytes(), || id.clone())));
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

/// `backend`'s answer, whose head came `took` after the request was sent, is the one the
/// client gets unless a later answer or syncgate's own replaces it.
pub fn answered(backend: &Arc<Backend>, took: Duration) {
    record(|e| e.answer = Some((backend.clone(), took)));
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
