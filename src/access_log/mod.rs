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
//!   The entry's fields are boxed, in a box the thread reuses: no lock, and no allocation in
//!   the common case.
//! - The proxy hands the entry back with its response, and it travels with the response
//!   body, which counts the bytes sent ([`Entry::sent`]). Its line is written when it drops:
//!   after the last byte, or when the client went away (the body, or the proxy's future,
//!   dropped unfinished: `aborted`, and status 499 when no answer had begun).
//! - [`sink`] takes the line as a compact binary [`record`](mod@record) into a per-thread
//!   buffer and hands the buffer to a writer thread in batches; the writer formats them
//!   ([`format`](mod@format)) and writes. A writer that falls behind costs lines, never a
//!   request's time.
//!
//! Nothing that could carry a credential is logged: the path is written without its query
//! string, and no header but `x-request-id` is.
//!
//! What it costs, measured: docs/benchmarks.md, "The access log".

mod format;
mod record;
mod sink;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Buf;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode, Version};
use http_body::Frame;

use crate::backend::Backend;
use crate::metrics::GuardOutcome;
use format::Line;
pub use sink::{flush_thread, AccessLog, AccessLogError, FLUSH_EVERY};

/// The status logged for a request whose client went away before any answer: nginx's 499.
const CLIENT_CLOSED: u16 = 499;

/// One request's line in the making, written when it drops.
///
/// Boxed: it moves with the request's future and then with its response body, a pointer in
/// place of some 400 bytes; while the log is off it is `None`. The box is taken from the
/// thread's spares ([`SPARES`]) and goes back there once its line is written: with many
/// requests in flight `malloc` would otherwise leave its fast per-thread cache for every one.
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
    answer: Option<(Names, Duration)>,
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
    /// When the proxy had the response's head ready (its own clock reading, reused as the
    /// completion time of a response whose body came with its head).
    head_at: Option<Instant>,
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

/// The pool and backend names of an answer: copied when they fit [`NAMES`] bytes (a config's
/// names nearly always do), else the backend kept. Not an `Arc` clone per request: the
/// backend's reference count is a locked read-modify-write on a line other threads write.
#[derive(Debug)]
enum Names {
    Short {
        pool: u8,
        backend: u8,
        bytes: [u8; NAMES],
    },
    Long(Arc<Backend>),
}

/// The longest pool and backend names, together, that [`Names::Short`] holds.
const NAMES: usize = 64;

impl Names {
    fn of(backend: &Arc<Backend>) -> Names {
        let (pool, name) = (backend.pool.as_bytes(), backend.name.as_bytes());
        match (u8::try_from(pool.len()), u8::try_from(name.len())) {
            (Ok(p), Ok(b)) if pool.len() + name.len() <= NAMES => {
                let mut bytes = [0; NAMES];
                bytes[..pool.len()].copy_from_slice(pool);
                bytes[pool.len()..pool.len() + name.len()].copy_from_slice(name);
                Names::Short {
                    pool: p,
                    backend: b,
                    bytes,
                }
            }
            _ => Names::Long(backend.clone()),
        }
    }

    /// `(pool, backend)`.
    fn get(&self) -> (&[u8], &[u8]) {
        match self {
            Names::Short {
                pool,
                backend,
                bytes,
            } => {
                let (p, b) = (usize::from(*pool), usize::from(*backend));
                (&bytes[..p], &bytes[p..p + b])
            }
            Names::Long(backend) => (backend.pool.as_bytes(), backend.name.as_bytes()),
        }
    }
}

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
    /// Applies `f` to the fields, while the log is on.
    fn record(&mut self, f: impl FnOnce(&mut Fields)) {
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
        self.record(|f| f.request_id = Some(Quoted::new(id.as_bytes(), || id.clone())));
    }

    /// `n` body bytes were read from the client.
    pub fn body_read(&mut self, n: usize) {
        self.record(|f| f.body_read = f.body_read.saturating_add(n as u64));
    }

    /// A counter of the body bytes that stream upstream from here on (a body too large to
    /// buffer), when the request is recorded.
    pub fn body_streamed(&mut self) -> Option<Arc<AtomicU64>> {
        let f = self.0.as_deref_mut()?;
        Some(f.streamed.get_or_insert_with(Arc::default).clone())
    }

    /// The request is sent to a backend (again).
    pub fn attempt(&mut self) {
        self.record(|f| f.attempts = f.attempts.saturating_add(1));
    }

    /// `backend`'s answer, whose head came `took` after the request was sent, is the one the
    /// client gets unless a later answer or syncgate's own replaces it.
    pub fn answered(&mut self, backend: &Arc<Backend>, took: Duration) {
        self.record(|f| f.answer = Some((Names::of(backend), took)));
    }

    /// syncgate answers the client itself (a `504`, a `503` in place of an unconfirmed
    /// answer): no backend's answer reaches it.
    pub fn local_answer(&mut self) {
        self.record(|f| f.answer = None);
    }

    /// The guard's outcome for a guarded answer.
    pub fn guard(&mut self, outcome: GuardOutcome) {
        self.record(|f| f.guard = Some(outcome));
    }

    /// Begins the line of `req`, from `client`, which arrived at `started`.
    pub fn begin<B>(req: &Request<B>, client: SocketAddr, started: Instant) -> Entry {
        let uri = req.uri();
        let path = Quoted::new(uri.path().as_bytes(), || {
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static(""))
        });
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
                head_at: None,
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
        f.head_at = None;
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

impl Fields {
    /// The response is complete, at `at` (else now).
    fn finish(&mut self, at: Option<Instant>) {
        if self.done.is_none() {
            self.done = Some(at.unwrap_or_else(Instant::now));
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
            backend: self.answer.as_ref().map(|(names, _)| names.get()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pool: &str, backend: &str) -> (Names, Arc<Backend>) {
        let b = Arc::new(Backend::new(
            pool,
            backend,
            "127.0.0.1:9".parse().expect("addr"),
            1,
        ));
        (Names::of(&b), b)
    }

    #[test]
    fn short_names_are_copied_and_long_ones_keep_the_backend() {
        let (short, b) = names("push", "w1");
        assert!(matches!(short, Names::Short { .. }));
        assert_eq!(short.get(), (&b"push"[..], &b"w1"[..]));
        assert_eq!(Arc::strong_count(&b), 1, "no reference kept");

        // Exactly NAMES bytes still fit; one more does not.
        let pool = "p".repeat(NAMES - 10);
        let (fits, _) = names(&pool, &"b".repeat(10));
        assert!(matches!(fits, Names::Short { .. }));
        let (long, b) = names(&pool, &"b".repeat(11));
        assert!(matches!(long, Names::Long(_)));
        assert_eq!(long.get(), (pool.as_bytes(), "b".repeat(11).as_bytes()));
        assert_eq!(Arc::strong_count(&b), 2);
    }
}
