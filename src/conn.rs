//! A client connection as the request path and the server see it: its facts ([`ConnInfo`]),
//! its activity ([`Activity`]: requests in progress, when the last one ended, whether a request
//! head has started), what the server does about that activity ([`verdict`], pure), and the
//! process-wide [`Registry`] of connections that `max_connections` reclaims idle ones from.
//!
//! Cost: the request path touches two atomics per request (in progress, then ended) and the
//! HTTP/1.1 reader one load per read; the registry is locked once when a connection opens and
//! once when it closes, and scanned only at the connection limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::Notify;

use crate::clock::now_millis;

/// Per-connection facts the proxy service needs.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP, rendered once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// Whether the client connection is TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// Facts of a new client connection.
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        let peer_ip = HeaderValue::from_maybe_shared(Bytes::from(peer.ip().to_string()))
            .expect("an IP address is a valid header value");
        ConnInfo { peer, peer_ip, tls }
    }
}

/// What one client connection is doing, shared by its server task, its requests and the
/// reader of its socket.
#[derive(Debug)]
pub struct Activity {
    /// Requests in progress (HTTP/2 runs several at once): from the service call until the
    /// response body has been sent.
    in_flight: AtomicU32,
    /// The socket's last write or flush could not complete (the client is not reading), or it
    /// is being shut down: hyper may hold bytes of an answer it has not written yet, or be
    /// closing the connection, so the connection is not parked.
    output_blocked: AtomicBool,
    /// Set on every read of the socket; cleared by the server before it asks hyper to let an
    /// idle connection go (an idle hyper reads nothing then: one that reads was still taking a
    /// request body).
    socket_read: AtomicBool,
    /// [`now_millis`] when the last request ended (or the connection opened).
    last_ms: AtomicU64,
    /// HTTP/1.1: [`now_millis`] when the first byte of a request head arrived while no request
    /// was in progress; 0 while no head has started. What `header_read_timeout` bounds.
    head_ms: AtomicU64,
    /// The server is closing this connection because it is idle (idle timeout, reclaim, or
    /// shutdown with nothing in progress): no request is cut short, so no lingering close.
    closing_idle: AtomicBool,
    /// A request has begun on this connection (it is a keep-alive connection when idle).
    served: AtomicBool,
    /// Asked to close by a newcomer at `max_connections`.
    reclaimed: AtomicBool,
    reclaim: Notify,
    /// The server's flag: it is closing its connections (shutdown). Shared by every
    /// connection; read once per HTTP/1.1 response, so that the last one says
    /// `Connection: close`.
    server_draining: Arc<AtomicBool>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new(Arc::default())
    }
}

impl Activity {
    /// A new connection's activity, under the server's draining flag.
    pub fn new(server_draining: Arc<AtomicBool>) -> Activity {
        Activity {
            in_flight: AtomicU32::new(0),
            output_blocked: AtomicBool::new(false),
            socket_read: AtomicBool::new(false),
            last_ms: AtomicU64::new(now_millis()),
            head_ms: AtomicU64::new(0),
            closing_idle: AtomicBool::new(false),
            served: AtomicBool::new(false),
            reclaimed: AtomicBool::new(false),
            reclaim: Notify::new(),
            server_draining,
        }
    }

    /// Marks one request in progress until the returned value drops; its head is complete.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_ms.store(0, Ordering::Release);
        self.served.store(true, Ordering::Relaxed);
        Active(self.clone())
    }

    /// HTTP/1.1 bytes arrived (at `now_ms()`, read only when needed: this runs on every
    /// read): with no request in progress and no head started, they start a request head
    /// (what else could they be on a keep-alive connection).
    pub fn bytes_arrived(&self, now_ms: impl FnOnce() -> u64) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_ms.load(Ordering::Acquire) == 0
        {
            self.head_ms.store(now_ms(), Ordering::Release);
        }
    }

    /// Forgets a started head: the bytes were no request's (the rest of an abandoned body,
    /// read while the connection closes).
    pub fn clear_head(&self) {
        self.head_ms.store(0, Ordering::Release);
    }

    /// The counters at this moment, for [`verdict`].
    pub fn observe(&self) -> Observed {
        Observed {
            in_flight: self.in_flight.load(Ordering::Acquire),
            last_ms: self.last_ms.load(Ordering::Acquire),
            head_ms: self.head_ms.load(Ordering::Acquire),
            output_blocked: self.output_blocked.load(Ordering::Acquire),
        }
    }

    /// Records a read of the socket (one plain store: only the connection's task writes it).
    pub fn note_socket_read(&self) {
        self.socket_read.store(true, Ordering::Relaxed);
    }

    /// Whether the socket was read since the last call.
    pub fn take_socket_read(&self) -> bool {
        let read = self.socket_read.load(Ordering::Relaxed);
        self.socket_read.store(false, Ordering::Relaxed);
        read
    }

    /// Records whether the socket's last write or flush could not complete, or its shutdown
    /// began (called on changes only).
    pub fn set_output_blocked(&self, blocked: bool) {
        self.output_blocked.store(blocked, Ordering::Release);
    }

    /// No request in progress and no request head started: closing now cuts nothing short.
    pub fn is_idle(&self) -> bool {
        let o = self.observe();
        o.in_flight == 0 && o.head_ms == 0
    }

    /// Records that the server closes the connection as idle (so the socket is not drained
    /// before it closes).
    pub fn close_as_idle(&self) {
        self.closing_idle.store(true, Ordering::Release);
    }

    /// Whether the server closes the connection as idle.
    pub fn is_closing_idle(&self) -> bool {
        self.closing_idle.load(Ordering::Acquire)
    }

    /// Whether a newcomer at `max_connections` may close this connection at `now_ms`: idle, not
    /// asked already, and either a keep-alive connection between requests or one that has
    /// said nothing for [`RECLAIM_GRACE_MS`] (a client that just connected is about to send
    /// its request, and closing it would fail a request to admit another).
    fn reclaimable(&self, now_ms: u64) -> bool {
        self.is_idle()
            && !self.reclaimed.load(Ordering::Acquire)
            && (self.served.load(Ordering::Relaxed)
                || now_ms.saturating_sub(self.last_ms.load(Ordering::Acquire)) >= RECLAIM_GRACE_MS)
    }

    /// Asks the connection to close (once); false when it was asked already.
    fn ask_to_close(&self) -> bool {
        let first = !self.reclaimed.swap(true, Ordering::AcqRel);
        if first {
            // A permit is stored when the connection is not waiting yet: no wake-up is lost.
            self.reclaim.notify_one();
        }
        first
    }

    /// Set (before [`Activity::reclaimed`] completes) when a newcomer at `max_connections`
    /// asked this connection to close.
    pub fn reclaim_asked(&self) -> &AtomicBool {
        &self.reclaimed
    }

    /// Completes when a newcomer at `max_connections` asked this connection to close.
    pub async fn reclaimed(&self) {
        self.reclaim.notified().await;
    }
}

/// One request in progress on a connection, until dropped.
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Active {
    /// The server is closing its connections.
    pub fn server_draining(&self) -> bool {
        self.0.server_draining.load(Ordering::Acquire)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // The time first: a checker that sees no request in progress sees when it ended.
        self.0.last_ms.store(now_millis(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Requests in progress.
    pub in_flight: u32,
    /// When the last request ended (or the connection opened).
    pub last_ms: u64,
    /// When a request head started (HTTP/1.1); 0: none.
    pub head_ms: u64,
    /// The socket's last write or flush could not complete.
    pub output_blocked: bool,
}

impl Observed {
    /// Between requests: nothing in progress, no head started, every answer written to the
    /// socket, no shutdown begun. A connection may be parked only then.
    pub fn between_requests(&self) -> bool {
        self.in_flight == 0 && self.head_ms == 0 && !self.output_blocked
    }
}

/// What the server does about a connection at a periodic check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it.
    Keep,
    /// Close it gracefully: no request for `idle_timeout` (HTTP/2 `GOAWAY`, HTTP/1.1 close).
    CloseIdle,
    /// Cut it: a request head started `header_read_timeout` ago and is still not complete.
    CutHead,
}

/// What to do about a connection observed as `o` at `now_ms`. Pure. A request in progress is
/// never cut; a started head is bounded by `header_ms`, from its first byte (so a keep-alive
/// connection waiting for its next request is not); otherwise idleness by `idle_ms`.
pub fn verdict(o: Observed, now_ms: u64, header_ms: u64, idle_ms: u64) -> Verdict {
    if o.in_flight > 0 {
        Verdict::Keep
    } else if o.head_ms != 0 {
        if now_ms.saturating_sub(o.head_ms) >= header_ms {
            Verdict::CutHead
        } else {
            Verdict::Keep
        }
    } else if now_ms.saturating_sub(o.last_ms) >= idle_ms {
        Verdict::CloseIdle
    } else {
        Verdict::Keep
    }
}

/// An HTTP/1.1 keep-alive connection idle this long (ms) is parked: hyper's connection, with
/// its two 8 KiB buffers, is let go until the client sends again (nginx and HAProxy free their
/// buffers between keep-alive requests likewise). A client that sends more often than this
/// keeps its connection as it is.
pub const PARK_AFTER_MS: u64 = 100;

/// Whether a connection observed as `o` at `now_ms`, and left to live by [`verdict`], may be
/// parked: nothing in progress, no head started, every answer written to the socket, and no
/// request ended for `park_ms`. Pure.
pub fn parkable(o: Observed, now_ms: u64, park_ms: u64) -> bool {
    o.between_requests() && now_ms.saturating_sub(o.last_ms) >= park_ms
}

/// A connection that has not sent a request yet is reclaimed only after this long (ms).
pub const RECLAIM_GRACE_MS: u64 = 1000;

/// Every open client connection of the process, across proxy threads.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Registers a connection until the returned value drops.
    pub fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// At `max_connections`: asks the connection idle longest that may be closed (see
    /// `Activity::reclaimable`) to close gracefully, as nginx closes idle keep-alive
    /// connections to admit new ones. False when none may. One scan of the connections, at
    /// the limit only.
    pub fn reclaim_idlest(&self, now_ms: u64) -> bool {
        let conns = self.lock();
        let idlest = conns
            .values()
            .filter(|a| a.reclaimable(now_ms))
            .min_by_key(|a| a.last_ms.load(Ordering::Acquire));
        idlest.is_some_and(|a| a.ask_to_close())
    }

    /// Open connections.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection in the [`Registry`], until dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(in_flight: u32, last_ms: u64, head_ms: u64) -> Observed {
        Observed {
            in_flight,
            last_ms,
            head_ms,
            output_blocked: false,
        }
    }

    #[test]
    fn a_keep_alive_connection_waits_for_idle_timeout_not_header_timeout() {
        // Last request ended at 1000; header timeout 10 s, idle timeout 75 s.
        let idle = seen(0, 1_000, 0);
        assert_eq!(verdict(idle, 13_000, 10_000, 75_000), Verdict::Keep);
        assert_eq!(verdict(idle, 75_999, 10_000, 75_000), Verdict::Keep);
        assert_eq!(verdict(idle, 76_000, 10_000, 75_000), Verdict::CloseIdle);
    }

    #[test]
    fn a_started_head_is_cut_at_header_timeout_from_its_first_byte() {
        let head = seen(0, 1_000, 50_000);
        assert_eq!(verdict(head, 59_999, 10_000, 75_000), Verdict::Keep);
        assert_eq!(verdict(head, 60_000, 10_000, 75_000), Verdict::CutHead);
        // Even past the idle timeout: a started head is not idle.
        assert_eq!(verdict(head, 55_000, 10_000, 2_000), Verdict::Keep);
    }

    #[test]
    fn a_request_in_progress_is_never_cut() {
        assert_eq!(
            verdict(seen(1, 1, 1), u64::MAX, 1, 1),
            Verdict::Keep,
            "in progress"
        );
        // A clock that went backwards is no overflow.
        assert_eq!(verdict(seen(0, 5_000, 0), 10, 1, 1), Verdict::Keep);
    }

    #[test]
    fn only_a_connection_quiet_for_the_park_time_is_parked() {
        // Last request ended at 1000; parked from 100 ms of quiet.
        assert!(!parkable(seen(0, 1_000, 0), 1_099, 100));
        assert!(parkable(seen(0, 1_000, 0), 1_100, 100));
        // Not with a request in progress, nor with a head started (a partial one included).
        assert!(!parkable(seen(1, 1_000, 0), 9_000, 100));
        assert!(!parkable(seen(0, 1_000, 5_000), 9_000, 100));
        // Nor while the socket does not take the last answer's bytes (a client not reading).
        let blocked = Observed {
            output_blocked: true,
            ..seen(0, 1_000, 0)
        };
        assert!(!parkable(blocked, 9_000, 100));
        // A clock that went backwards is no overflow.
        assert!(!parkable(seen(0, 5_000, 0), 10, 100));
    }

    #[test]
    fn bytes_start_a_head_only_between_requests() {
        let a = Arc::new(Activity::default());
        a.bytes_arrived(|| 7);
        assert_eq!(a.observe().head_ms, 7);
        a.bytes_arrived(|| 9);
        assert_eq!(a.observe().head_ms, 7, "the first byte counts");
        let active = a.begin();
        assert_eq!(a.observe().head_ms, 0, "the head completed");
        a.bytes_arrived(|| 11);
        assert_eq!(
            a.observe().head_ms,
            0,
            "body bytes of a request in progress"
        );
        drop(active);
        assert!(a.is_idle());
    }

    #[test]
    fn the_registry_reclaims_the_connection_idle_longest_once() {
        let registry = Arc::new(Registry::default());
        let (busy, older, newer) = (
            Arc::new(Activity::default()),
            Arc::new(Activity::default()),
            Arc::new(Activity::default()),
        );
        for (a, last) in [(&busy, 1), (&older, 10), (&newer, 20)] {
            drop(a.begin()); // each served one request
            a.last_ms.store(last, Ordering::Release);
        }
        let _in_progress = busy.begin();
        let _b = registry.register(busy.clone());
        let _o = registry.register(older.clone());
        let n = registry.register(newer.clone());
        assert_eq!(registry.len(), 3);
        assert!(registry.reclaim_idlest(30));
        assert!(older.reclaimed.load(Ordering::Acquire));
        assert!(!newer.reclaimed.load(Ordering::Acquire));
        assert!(registry.reclaim_idlest(30), "then the next idle one");
        assert!(newer.reclaimed.load(Ordering::Acquire));
        assert!(!registry.reclaim_idlest(30), "only a busy one is left");
        drop(n);
        assert_eq!(registry.len(), 2);
    }

    #[test]
    fn a_client_that_has_not_sent_its_request_gets_a_grace_second() {
        let registry = Arc::new(Registry::default());
        let fresh = Arc::new(Activity::default());
        fresh.last_ms.store(5_000, Ordering::Release);
        let _f = registry.register(fresh.clone());
        assert!(!registry.reclaim_idlest(5_000 + RECLAIM_GRACE_MS - 1));
        assert!(
            registry.reclaim_idlest(5_000 + RECLAIM_GRACE_MS),
            "silent for a second"
        );
    }
}
