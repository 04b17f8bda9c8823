//! A [`Record`]: what one line says, as the request fills it in while it runs.
//!
//! A request takes a box its thread kept and fills it in place. Soon after its end (with the
//! next few ended requests' records) its thread formats the record's [`Line`] into its batch
//! of text, lets go of what the record held, and keeps the box for reuse ([`super::sink`]).
//! No record is encoded, copied or decoded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Uri, Version};

use super::format::Line;
use crate::backend::Backend;
use crate::metrics::GuardOutcome;

/// The status logged for a request whose client went away before any answer: nginx's 499.
const CLIENT_CLOSED: u16 = 499;

/// One request's line in the making.
///
/// Every field a request writes is `Copy`: a store into the box, never a read of what the box
/// held before. A box kept from an earlier request may be out of the cache, and a store to a
/// line not in cache waits in the store buffer while the request goes on, where a read (to drop
/// the old value) would stall it. What must be kept by reference (a path, an id or a method
/// too long to copy inline, a backend with long names, a streaming counter) goes in [`Held`],
/// a second box written only then, and emptied once the line is formatted.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) started: Instant,
    pub(super) client: SocketAddr,
    method: Short<METHOD>,
    /// The path without its query string, which is never written (push APIs carry keys there).
    path: Short<SHORT>,
    pub(super) version: Version,
    request_id: Option<Short<SHORT>>,
    /// The backend whose answer the client gets, and how long its answer's head took.
    answer: Option<(Names, Duration)>,
    pub(super) guard: Option<GuardOutcome>,
    /// Requests sent upstream: the first, connect retries, second-opinion replays.
    pub(super) attempts: u32,
    /// Body bytes read from the client (buffered; streamed ones are added at the end).
    pub(super) body_read: u64,
    /// The status sent, once the response began.
    pub(super) status: Option<u16>,
    pub(super) bytes_out: u64,
    /// When the response's last byte was handed over (or the client went away); None until
    /// then.
    pub(super) done: Option<Instant>,
    /// When the proxy had the response's head ready (its own clock reading, reused as the
    /// completion time of a response whose body came with its head).
    pub(super) head_at: Option<Instant>,
    /// The client went away before the response was complete.
    pub(super) aborted: bool,
    /// Boxed apart: a record with nothing held (nearly all) is smaller by its size.
    held: Option<Box<Held>>,
}

/// What a record keeps apart, in the rare case it does. Texts are copied, not kept by
/// reference: a `Uri` or a `HeaderValue` is a slice of the buffer hyper read the request
/// into, which a record must not keep alive.
#[derive(Debug, Default)]
struct Held {
    method: Option<Box<[u8]>>,
    path: Option<Box<[u8]>>,
    request_id: Option<Box<[u8]>>,
    backend: Option<Arc<Backend>>,
    /// Body bytes streamed upstream (a body too large to buffer), counted as they go.
    streamed: Option<Arc<AtomicU64>>,
}

/// Bytes a line quotes, copied: up to `N` of them, else (`len` = [`IN_HELD`]) kept in
/// [`Held`].
#[derive(Debug, Clone, Copy)]
struct Short<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

/// The length of a [`Short`] whose bytes are in [`Held`].
const IN_HELD: u8 = u8::MAX;
/// The longest path or id copied: a path, a UUID or a generated id fit.
const SHORT: usize = 48;
/// The longest method copied: every standard one fits.
const METHOD: usize = 7;

impl<const N: usize> Short<N> {
    const EMPTY: Short<N> = Short {
        len: 0,
        bytes: [0; N],
    };

    /// Copies `bytes` in, if they fit; else marks them held. Writes only the bytes' length
    /// and the bytes: the record is filled in place, in memory that is seldom in cache.
    fn set(&mut self, bytes: &[u8]) -> bool {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= N && len != IN_HELD => {
                self.len = len;
                self.bytes[..bytes.len()].copy_from_slice(bytes);
                true
            }
            _ => {
                self.len = IN_HELD;
                false
            }
        }
    }

    /// The bytes copied; `held` when they are kept there.
    fn get<'a>(&'a self, held: impl FnOnce() -> &'a [u8]) -> &'a [u8] {
        match self.len {
            IN_HELD => held(),
            len => &self.bytes[..usize::from(len)],
        }
    }
}

/// The pool and backend names of an answer: copied when they fit [`NAMES`] bytes together (a
/// config's names nearly always do), else the backend is kept in [`Held`]. Not an `Arc` clone
/// per request: the backend's reference count is a locked read-modify-write on a line other
/// threads write.
#[derive(Debug, Clone, Copy)]
struct Names {
    /// [`IN_HELD`]: the names are the held backend's.
    pool: u8,
    backend: u8,
    bytes: [u8; NAMES],
}

/// The longest pool and backend names, together, that [`Names`] copies.
const NAMES: usize = 64;

impl Record {
    /// A record of a request from `client` that arrived at `started`, its line still to be
    /// filled in.
    pub(super) fn new(
        started: Instant,
        client: SocketAddr,
        method: &Method,
        uri: &Uri,
        version: Version,
    ) -> Record {
        let mut r = Record {
            started,
            client,
            method: Short::EMPTY,
            path: Short::EMPTY,
            version,
            request_id: None,
            answer: None,
            guard: None,
            attempts: 0,
            body_read: 0,
            status: None,
            bytes_out: 0,
            done: None,
            head_at: None,
            aborted: false,
            held: None,
        };
        r.quote(method, uri);
        r
    }

    /// Fills a kept box (its [`Held`] emptied by [`Record::release`]) for a new request,
    /// field by field: stores only.
    pub(super) fn refill(
        &mut self,
        started: Instant,
        client: SocketAddr,
        method: &Method,
        uri: &Uri,
        version: Version,
    ) {
        debug_assert!(self.held.is_none(), "a kept box holds nothing");
        self.started = started;
        self.client = client;
        self.version = version;
        self.request_id = None;
        self.answer = None;
        self.guard = None;
        self.attempts = 0;
        self.body_read = 0;
        self.status = None;
        self.bytes_out = 0;
        self.done = None;
        self.head_at = None;
        self.aborted = false;
        self.quote(method, uri);
    }

    fn quote(&mut self, method: &Method, uri: &Uri) {
        if !self.method.set(method.as_str().as_bytes()) {
            self.held().method = Some(method.as_str().as_bytes().into());
        }
        if !self.path.set(uri.path().as_bytes()) {
            self.held().path = Some(uri.path().as_bytes().into());
        }
    }

    pub(super) fn is_head(&self) -> bool {
        self.method().eq(b"HEAD")
    }

    fn method(&self) -> &[u8] {
        self.method.get(|| {
            self.held
                .as_ref()
                .and_then(|h| h.method.as_deref())
                .unwrap_or_default()
        })
    }

    /// The request's `x-request-id`.
    pub(super) fn request_id(&mut self, id: &HeaderValue) {
        if !self.request_id.insert(Short::EMPTY).set(id.as_bytes()) {
            self.held().request_id = Some(id.as_bytes().into());
        }
    }

    /// `backend`'s answer, whose head came `took` after the request was sent.
    pub(super) fn answered(&mut self, backend: &Arc<Backend>, took: Duration) {
        self.let_go_of_backend();
        let (pool, name) = (backend.pool.as_bytes(), backend.name.as_bytes());
        let names = match (u8::try_from(pool.len()), u8::try_from(name.len())) {
            (Ok(p), Ok(b)) if pool.len() + name.len() <= NAMES => {
                let mut bytes = [0; NAMES];
                bytes[..pool.len()].copy_from_slice(pool);
                bytes[pool.len()..pool.len() + name.len()].copy_from_slice(name);
                Names {
                    pool: p,
                    backend: b,
                    bytes,
                }
            }
            _ => {
                self.held().backend = Some(backend.clone());
                Names {
                    pool: IN_HELD,
                    backend: 0,
                    bytes: [0; NAMES],
                }
            }
        };
        self.answer = Some((names, took));
    }

    /// No backend's answer reaches the client.
    pub(super) fn local_answer(&mut self) {
        self.let_go_of_backend();
        self.answer = None;
    }

    /// An answer replaced: the backend held for its names, if any, is let go now.
    fn let_go_of_backend(&mut self) {
        if let Some(held) = self.held.as_mut() {
            held.backend = None;
        }
    }

    /// A counter of the body bytes streamed upstream.
    pub(super) fn streamed(&mut self) -> Arc<AtomicU64> {
        self.held()
            .streamed
            .get_or_insert_with(Arc::default)
            .clone()
    }

    /// `(pool, backend)` of the answer.
    fn names(&self) -> Option<(&[u8], &[u8])> {
        let (names, _) = self.answer.as_ref()?;
        if names.pool == IN_HELD {
            let b = self.held.as_ref()?.backend.as_ref()?;
            return Some((b.pool.as_bytes(), b.name.as_bytes()));
        }
        let (p, b) = (usize::from(names.pool), usize::from(names.backend));
        Some((&names.bytes[..p], &names.bytes[p..p + b]))
    }

    /// The response is complete, at `at` (else now).
    pub(super) fn finish(&mut self, at: Option<Instant>) {
        if self.done.is_none() {
            self.done = Some(at.unwrap_or_else(Instant::now));
        }
    }

    /// The request's part is over: complete (else aborted, now), and the bytes streamed
    /// upstream counted in. What is left is for the line to read.
    pub(super) fn close(&mut self) {
        if self.done.is_none() {
            self.aborted = true;
            self.done = Some(Instant::now());
        }
        if let Some(streamed) = self.held.as_mut().and_then(|h| h.streamed.take()) {
            let n = streamed.load(Ordering::Relaxed);
            self.body_read = self.body_read.saturating_add(n);
        }
    }

    /// The line, at `time` (the wall-clock time of [`Record::done`], since the Unix epoch).
    pub(super) fn line(&self, time: Duration) -> Line<'_> {
        let end = self.done.unwrap_or(self.started);
        Line {
            time,
            client: self.client,
            method: self.method(),
            path: self.path.get(|| {
                self.held
                    .as_ref()
                    .and_then(|h| h.path.as_deref())
                    .unwrap_or_default()
            }),
            version: self.version,
            status: self.status.unwrap_or(CLIENT_CLOSED),
            bytes_in: self.body_read,
            bytes_out: self.bytes_out,
            duration: end.saturating_duration_since(self.started),
            upstream: self.answer.as_ref().map(|a| a.1),
            backend: self.names(),
            guard: self.guard,
            retries: self.attempts.saturating_sub(1),
            request_id: self.request_id.as_ref().map(|id| {
                id.get(|| {
                    self.held
                        .as_ref()
                        .and_then(|h| h.request_id.as_deref())
                        .unwrap_or_default()
                })
            }),
            aborted: self.aborted,
        }
    }

    fn held(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default)
    }

    /// Lets go of what the record holds beyond itself, once its line is formatted: a box kept
    /// for reuse holds nothing.
    pub(super) fn release(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
pub(super) fn sample() -> Box<Record> {
    let mut r = Record::new(
        Instant::now(),
        "127.0.0.1:1".parse().expect("addr"),
        &Method::GET,
        &Uri::from_static("/"),
        Version::HTTP_11,
    );
    r.status = Some(200);
    r.done = Some(r.started);
    Box::new(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(pool: &str, name: &str) -> Arc<Backend> {
        Arc::new(Backend::new(
            pool,
            name,
            "127.0.0.1:9".parse().expect("addr"),
            1,
        ))
    }

    #[test]
    fn short_names_are_copied_and_long_ones_keep_the_backend() {
        let mut r = *sample();
        let b = backend("push", "w1");
        r.answered(&b, Duration::from_millis(1));
        assert_eq!(r.names(), Some((&b"push"[..], &b"w1"[..])));
        assert_eq!(Arc::strong_count(&b), 1, "no reference kept");

        // Exactly NAMES bytes still fit; one more does not.
        let pool = "p".repeat(NAMES - 10);
        let fits = backend(&pool, &"b".repeat(10));
        r.answered(&fits, Duration::ZERO);
        assert_eq!(Arc::strong_count(&fits), 1);
        let long = backend(&pool, &"b".repeat(11));
        r.answered(&long, Duration::ZERO);
        assert_eq!(
            r.names(),
            Some((pool.as_bytes(), "b".repeat(11).as_bytes()))
        );
        assert_eq!(Arc::strong_count(&long), 2);
        // A later answer replaces it: the backend is let go at once.
        r.answered(&fits, Duration::ZERO);
        assert_eq!(Arc::strong_count(&long), 1, "let go when replaced");
        r.answered(&long, Duration::ZERO);
        r.local_answer();
        assert_eq!(
            Arc::strong_count(&long),
            1,
            "let go for syncgate's own answer"
        );
        r.answered(&long, Duration::ZERO);
        r.release();
        assert_eq!(Arc::strong_count(&long), 1, "let go once written");
    }

    #[test]
    fn long_texts_are_kept_until_written_and_a_refilled_box_holds_nothing_of_before() {
        let long_path = format!("/{}", "a".repeat(SHORT));
        let uri = Uri::try_from(format!("{long_path}?key=secret")).expect("uri");
        let method = Method::from_bytes(b"PROPFIND2").expect("method");
        let long_id = HeaderValue::from_str(&"i".repeat(SHORT + 1)).expect("id");
        let mut r = Record::new(
            Instant::now(),
            "127.0.0.1:1".parse().expect("addr"),
            &method,
            &uri,
            Version::HTTP_11,
        );
        r.request_id(&long_id);
        r.close();
        let line = r.line(Duration::ZERO);
        assert_eq!(line.path, long_path.as_bytes(), "no query string");
        assert_eq!(line.method, b"PROPFIND2");
        assert_eq!(line.request_id, Some(long_id.as_bytes()));
        assert!(line.aborted && line.status == CLIENT_CLOSED);

        r.release();
        assert!(r.held.is_none(), "released: nothing held");
        r.refill(
            Instant::now(),
            "127.0.0.1:2".parse().expect("addr"),
            &Method::HEAD,
            &Uri::from_static("/x?k=v"),
            Version::HTTP_2,
        );
        assert!(r.is_head());
        let line = r.line(Duration::ZERO);
        assert_eq!((line.method, line.path), (&b"HEAD"[..], &b"/x"[..]));
        assert_eq!((line.request_id, line.backend), (None, None));
        assert!(!line.aborted);
    }
}
