//! One client connection from accept to close.
//!
//! Opening: the TLS handshake, then the first bytes (which decide the protocol, see
//! [`super::preface`]), each within `header_read_timeout`; a client that sends nothing is cut
//! then. Serving: hyper runs the connection over a [`Watched`] socket, and one periodic check
//! per connection applies [`verdict`]: a request head that started `header_read_timeout` ago and
//! is still not complete cuts the connection; no request in progress for `idle_timeout` closes
//! it gracefully (HTTP/2 `GOAWAY`, HTTP/1.1 close), so keep-alive idleness follows
//! `idle_timeout`. hyper's own header timer is off: it also ran between keep-alive requests (so
//! idle connections closed at `header_read_timeout`) and cost a boxed timer per request.
//! Shutdown and a newcomer at `max_connections` ([`Activity::reclaimed`]) close it gracefully
//! too.
//!
//! Parking: an HTTP/1.1 keep-alive connection quiet for [`PARK_AFTER_MS`] lets hyper's
//! connection go, and with it the two 8 KiB buffers hyper keeps for as long as it serves one
//! (its head writer's and its reader's), until the client sends again (`served.rs`). A parked
//! connection is the socket, its task, its [`Activity`] and the service: 3.6–5.0 KiB of the
//! process's memory per idle connection against 17–19 KiB served (`benches/memory.sh`). Idle
//! agents on keep-alive connections are the usual load of a push API.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::io::{Watched, LINGER_TIME, PREFIX_LEN};
use super::preface::{sniff, Opening, BAD_PREFACE_ANSWER};
use super::served::{Event, Served, H1, H2};
use crate::access_log;
use crate::clock::now_millis;
use crate::conn::{
    parkable, verdict, Active, Activity, ConnInfo, Registry, Verdict, PARK_AFTER_MS,
};
use crate::deadline;
use crate::proxy;
use crate::snapshot::Shared;

/// What every connection of an accept loop shares.
#[derive(Clone)]
pub(super) struct ConnCx {
    pub shared: Arc<Shared>,
    /// hyper's HTTP/1.1 connection settings.
    pub http1: Arc<http1::Builder>,
    /// hyper's HTTP/2 connection settings.
    pub http2: Arc<http2::Builder<TokioExecutor>>,
    pub token: CancellationToken,
    /// Set when `token` is cancelled (see `Stop` in the server).
    pub draining: Arc<AtomicBool>,
    pub registry: Arc<Registry>,
}

/// The running config's limits for one connection, read when it was accepted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// `header_read_timeout`.
    pub header: Duration,
    /// `idle_timeout`.
    pub idle: Duration,
    /// What a lingering close may discard: `max_request_body` plus some slack.
    pub linger_bytes: u64,
}

/// Serves one accepted client connection (TLS with `acceptor`) until it closes.
pub(super) async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    cx: ConnCx,
    limits: Limits,
) {
    let activity = Arc::new(Activity::new(cx.draining.clone()));
    let _registered = cx.registry.register(activity.clone());
    let _open = cx.shared.metrics.connections.opened();
    let info = ConnInfo::new(peer, acceptor.is_some());
    match acceptor {
        None => open(stream, false, &cx, info, activity, limits).await,
        // On the heap: rustls' state would otherwise make every cleartext connection's task
        // as large as a TLS one's.
        Some(acceptor) => Box::pin(serve_tls(stream, acceptor, &cx, info, activity, limits)).await,
    }
}

/// The TLS handshake within `header_read_timeout`, then [`open`].
async fn serve_tls(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    cx: &ConnCx,
    info: ConnInfo,
    activity: Arc<Activity>,
    limits: Limits,
) {
    let peer = info.peer;
    // Shutdown, or a newcomer at the connection limit, does not wait for a handshake.
    let handshake = tokio::select! {
        biased;
        _ = cx.token.cancelled() => return,
        _ = activity.reclaimed() => return,
        r = tokio::time::timeout(limits.header, acceptor.accept(stream)) => r,
    };
    match handshake {
        Ok(Ok(tls)) => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            open(tls, h2, cx, info, activity, limits).await;
        }
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
    }
}

/// Reads the first bytes within `header_read_timeout`, then serves the protocol they name,
/// or answers a bad HTTP/2 preface.
async fn open<I>(
    mut io: I,
    h2_negotiated: bool,
    cx: &ConnCx,
    info: ConnInfo,
    activity: Arc<Activity>,
    limits: Limits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let mut first = [0u8; PREFIX_LEN];
    let sniffed = tokio::select! {
        biased;
        _ = cx.token.cancelled() => return,
        _ = activity.reclaimed() => return,
        r = tokio::time::timeout(limits.header, sniff(&mut io, &mut first, h2_negotiated)) => r,
    };
    let (opening, n) = match sniffed {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => return tracing::debug!(peer = %peer, error = %e, "client read failed"),
        Err(_) => {
            return tracing::debug!(peer = %peer, "nothing received within header_read_timeout")
        }
    };
    let http1 = opening == Opening::Http1;
    let mut io = Watched::new(
        io,
        &first[..n],
        activity.clone(),
        http1,
        limits.linger_bytes,
    );
    match opening {
        Opening::Closed => {}
        Opening::BadPreface => {
            tracing::debug!(peer = %peer, "invalid HTTP/2 connection preface: GOAWAY");
            // Written, then closed with lingering, so that the GOAWAY is read rather than
            // lost to a reset; bounded like any lingering close.
            let _ = tokio::time::timeout(LINGER_TIME, async {
                io.write_all(&BAD_PREFACE_ANSWER).await?;
                io.shutdown().await
            })
            .await;
        }
        Opening::Http1 | Opening::Http2 => {
            if http1 {
                // The sniffed bytes began the first request head.
                activity.bytes_arrived(now_millis);
            }
            serve(io, http1, cx, info, activity, limits).await;
        }
    }
}

/// How long an HTTP/1.1 connection idle at shutdown is left open for a request already on its
/// way (answered with `Connection: close`) before it is closed.
const SHUTDOWN_IDLE_GRACE: Duration = Duration::from_millis(500);

/// Runs hyper on the connection until it ends (see [`Watch::drive`]).
///
/// Each protocol's connection is driven in a future of its own on the heap, sized for that
/// protocol: the connection's task then holds one pointer instead of room for the larger of
/// hyper's HTTP/1.1 and HTTP/2 connections, which every idle keep-alive connection paid.
///
/// At shutdown an HTTP/2 connection gets `GOAWAY` (clients retry the streams it did not take).
/// HTTP/1.1 has no such signal: closing a keep-alive connection at once loses a request the
/// client may be sending at that moment, a failure that no client retries for a POST. So each
/// response from then on carries `Connection: close` (the client's next request opens a new
/// connection, to whichever instance still listens, e.g. a `--takeover` successor), and a
/// connection that stays idle closes after [`SHUTDOWN_IDLE_GRACE`].
async fn serve<I>(
    io: Watched<I>,
    http1: bool,
    cx: &ConnCx,
    info: ConnInfo,
    activity: Arc<Activity>,
    limits: Limits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let service = {
        let (activity, shared) = (activity.clone(), cx.shared.clone());
        service_fn(move |req| {
            // In progress from the call until the response body has been sent.
            let active = activity.begin();
            let arrived = std::time::Instant::now();
            // While the access log is off, this branch is all a request pays for it.
            let log = if shared.access_log.is_enabled() {
                access_log::Entry::begin(&req, peer, arrived)
            } else {
                access_log::Entry::off()
            };
            Respond {
                // Boxed: hyper keeps room for one request future per HTTP/1.1 connection for
                // as long as the connection lives, idle or not; a box costs that room only
                // while a request is in progress.
                serving: Box::pin(proxy::serve(&shared, &info, req, arrived, log)),
                http1,
                active: Some(active),
            }
        })
    };
    let watch = Watch {
        cx,
        peer,
        activity: activity.clone(),
        limits,
    };
    if http1 {
        let conn = H1::new(
            &cx.http1,
            peer,
            &activity,
            &cx.shared.metrics.connections,
            io,
            service,
        );
        Box::pin(watch.drive(conn, true)).await;
    } else {
        let conn = H2 {
            conn: Box::pin(cx.http2.serve_connection(TokioIo::new(io), service)),
            peer,
        };
        Box::pin(watch.drive(conn, false)).await;
    }
}

/// A one-time signal whose sender sets `flag` before it fires (the drain token and the
/// draining flag; a reclaim and its flag), polled cheaply. The connection's task is polled at
/// least twice per request, and `tokio::select!` polls every branch each time: polling the
/// token or a `Notify` takes a mutex every time (the drain token's is shared by every
/// connection of every proxy thread). Once a poll has registered the task's waker with the
/// signal, a later poll by the same task reads the flag and stops there; the signal, when it
/// fires, wakes the task, which then sees the flag set.
struct Signal<'a> {
    flag: &'a AtomicBool,
    fired: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    /// The waker `fired` was last polled with.
    waker: Option<Waker>,
}

impl<'a> Signal<'a> {
    fn new(flag: &'a AtomicBool, fired: impl Future<Output = ()> + Send + 'a) -> Signal<'a> {
        Signal {
            flag,
            fired: Box::pin(fired),
            waker: None,
        }
    }
}

impl Future for Signal<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let polled = self.fired.as_mut().poll(cx);
        if polled.is_pending() {
            self.waker = Some(cx.waker().clone());
        }
        polled
    }
}

/// What [`Watch::drive`] needs besides the connection.
struct Watch<'a> {
    cx: &'a ConnCx,
    peer: SocketAddr,
    activity: Arc<Activity>,
    limits: Limits,
}

impl Watch<'_> {
    /// Drives `conn` until it ends, applying [`verdict`] a few times per timeout, and closes it
    /// gracefully at shutdown, when reclaimed, or idle; parks an HTTP/1.1 connection quiet for
    /// [`PARK_AFTER_MS`] (checked [`PARK_AFTER_MS`] after hyper begins to serve it, then at
    /// doubling intervals while it stays busy).
    async fn drive<C: Served>(self, mut conn: C, http1: bool) {
        let Watch {
            cx,
            peer,
            activity,
            limits,
        } = self;
        // A few checks per timeout: a head is cut, an idle connection closed, between 1 and 1.25
        // timeouts (and up to a deadline tick later); one alarm per connection, none per
        // request.
        let period = (limits.header.min(limits.idle) / 4)
            .clamp(Duration::from_millis(1), Duration::from_secs(3600));
        // While hyper serves the connection, the wait before the next park check: doubled each
        // time a check finds the connection busy, up to `period`, so that a busy connection
        // wakes for checks as rarely as before parking existed; back to the first wait when
        // it wakes from a park.
        let park_first = period.min(Duration::from_millis(PARK_AFTER_MS));
        let mut park_wait = park_first;
        let next_check =
            |after: Duration| crate::clock::deadline(tokio::time::Instant::now(), after);
        let mut check =
            deadline::Alarm::at(next_check(if conn.may_park() { park_wait } else { period }));
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (header_ms, idle_ms) = (millis(limits.header), millis(limits.idle));
        let mut closing = false;
        // Armed at shutdown for an HTTP/1.1 connection (see the function's doc).
        let idle_grace = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(idle_grace);
        let mut draining = false;
        let mut drain = Signal::new(&cx.draining, cx.token.cancelled());
        let mut reclaim = Signal::new(activity.reclaim_asked(), activity.reclaimed());
        loop {
            tokio::select! {
                // The connection first: a request already in the socket when shutdown begins is
                // read and served before the graceful close.
                biased;
                event = &mut conn => match event {
                    Event::Ended => return,
                    Event::Unparked => {
                        park_wait = park_first;
                        check.reset(next_check(park_wait));
                    }
                },
                _ = &mut drain, if !closing && !draining => {
                    if http1 {
                        draining = true;
                        idle_grace
                            .as_mut()
                            .reset(tokio::time::Instant::now() + SHUTDOWN_IDLE_GRACE);
                    } else {
                        conn.graceful_shutdown();
                        closing = true;
                    }
                }
                _ = idle_grace.as_mut(), if draining && !closing => {
                    // A request in progress ends the connection with its `Connection: close`
                    // answer; an idle one has had its grace.
                    if activity.is_idle() {
                        activity.close_as_idle();
                        conn.graceful_shutdown();
                        closing = true;
                    } else {
                        idle_grace
                            .as_mut()
                            .reset(tokio::time::Instant::now() + SHUTDOWN_IDLE_GRACE / 10);
                    }
                }
                _ = &mut reclaim, if !closing => {
                    tracing::debug!(peer = %peer, "idle client connection closed to admit a new one (max_connections)");
                    activity.close_as_idle();
                    conn.graceful_shutdown();
                    closing = true;
                }
                _ = &mut check => {
                    let (seen, now) = (activity.observe(), now_millis());
                    match verdict(seen, now, header_ms, idle_ms) {
                        Verdict::Keep if draining || closing || !conn.may_park() => {}
                        Verdict::Keep if parkable(seen, now, PARK_AFTER_MS) => conn.park(),
                        Verdict::Keep => park_wait = (park_wait * 2).min(period),
                        Verdict::CloseIdle if closing => {}
                        Verdict::CloseIdle => {
                            tracing::debug!(peer = %peer, "idle client connection closed");
                            activity.close_as_idle();
                            conn.graceful_shutdown();
                            closing = true;
                        }
                        Verdict::CutHead => {
                            tracing::debug!(peer = %peer, "request head not complete within header_read_timeout; connection cut");
                            return;
                        }
                    }
                    check.reset(next_check(if conn.may_park() {
                        park_wait
                    } else {
                        period
                    }));
                }
            }
        }
    }
}

static CLOSE: http::HeaderValue = http::HeaderValue::from_static("close");

/// One request's future as hyper holds it: the proxy's future, boxed, and what the response
/// takes along. Written out rather than an `async` block, which would keep the proxy's future
/// twice (as its capture and as the future it awaits) and copy both into its box: 5.6 KB per
/// request where the proxy's future is 2.8 KB.
struct Respond<F> {
    serving: Pin<Box<F>>,
    /// On an HTTP/1.1 connection a response sent while the server drains says it is the last.
    http1: bool,
    /// Taken by the response (None only once the future has completed).
    active: Option<Active>,
}

impl<F, B> Future for Respond<F>
where
    F: Future<Output = (Response<B>, access_log::Entry)>,
    B: Body,
{
    type Output = Result<Response<Tracked<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (mut resp, mut log) = std::task::ready!(this.serving.as_mut().poll(cx));
        if this.http1 && this.active.as_ref().is_some_and(Active::server_draining) {
            // Shutting down: the last response of this HTTP/1.1 connection (hyper closes it
            // once written).
            resp.headers_mut()
                .insert(http::header::CONNECTION, CLOSE.clone());
        }
        log.responded(resp.status(), resp.body().is_end_stream());
        let active = this.active.take();
        Poll::Ready(Ok(resp.map(|body| Tracked {
            body,
            log,
            _active: active,
        })))
    }
}

/// A response body that keeps its request in progress until it has been sent (or dropped),
/// and carries its access log entry, whose line is written when it drops.
struct Tracked<B> {
    body: B,
    log: access_log::Entry,
    _active: Option<Active>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        this.log.sent(&polled, this.body.is_end_stream());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use tokio::sync::Notify;

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn woken(c: &Arc<Count>) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_signal_wakes_the_waker_it_was_last_polled_with_and_completes_once_its_flag_is_set() {
        let (flag, notify) = (AtomicBool::new(false), Notify::new());
        let mut signal = Signal::new(&flag, notify.notified());
        let (a, b) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        assert!(Pin::new(&mut signal)
            .poll(&mut Context::from_waker(&wa))
            .is_pending());
        // Polled again by the same task: nothing changes, the flag is not set.
        assert!(Pin::new(&mut signal)
            .poll(&mut Context::from_waker(&wa))
            .is_pending());
        // By another waker: the signal must wake that one now.
        assert!(Pin::new(&mut signal)
            .poll(&mut Context::from_waker(&wb))
            .is_pending());

        // The sender's order: the flag, then the signal.
        flag.store(true, Ordering::Release);
        notify.notify_waiters();
        assert_eq!((woken(&a), woken(&b)), (0, 1));
        assert!(Pin::new(&mut signal)
            .poll(&mut Context::from_waker(&wb))
            .is_ready());
    }

    #[test]
    fn a_signal_whose_flag_is_set_is_ready_at_once() {
        let (flag, notify) = (AtomicBool::new(true), Notify::new());
        let mut signal = Signal::new(&flag, notify.notified());
        let w = Waker::from(Arc::new(Count::default()));
        assert!(Pin::new(&mut signal)
            .poll(&mut Context::from_waker(&w))
            .is_ready());
    }
}
