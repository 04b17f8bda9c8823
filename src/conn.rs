//! A client connection as the request path sees it: its facts ([`ConnInfo`]) and its
//! activity ([`Activity`]), which the server's idle timeout goes by.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

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

/// Requests in progress on one client connection (HTTP/2 runs several at once) and when the
/// last one ended: what the connection's idle timeout goes by.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicU32,
    /// [`now_millis`] when the last request ended (or the connection opened).
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicU32::new(0),
            last_ms: AtomicU64::new(now_millis()),
        }
    }
}

impl Activity {
    /// How long the connection has had no request in progress; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(now_millis().saturating_sub(last)))
    }

    /// Marks one request in progress until the returned value drops.
    pub fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Active(self.clone())
    }
}

/// One request in progress on a connection, until dropped.
#[derive(Debug)]
pub struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        // The time first: a checker that sees no request in progress sees when it ended.
        self.0.last_ms.store(now_millis(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
