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
//! (its head writer's and its reader's), until the client sends again ([`H1`]). A parked
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
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::io::{Watched, LINGER_TIME, PREFIX_LEN};
use super::preface::{sniff, Opening, BAD_PREFACE_ANSWER};
use crate::access_log;
use crate::clock::now_millis;
use crate::conn::{
    parkable, verdict, Active, Activity, ConnInfo, Registry, Verdict, PARK_AFTER_MS,
};
use crate::deadline;
use crate::metrics::{Connections, ParkedConnection};
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

/// Runs hyper on the connection until it ends (see [`drive`]).
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

/// What a served connection's future reports to [`Watch::drive`].
enum Event {
    /// The connection is over.
    Ended,
    /// A parked HTTP/1.1 connection is served by hyper again.
    Unparked,
}

/// hyper's connection as [`Watch::drive`] steers it.
trait Served: Future<Output = Event> + Unpin {
    /// Starts a graceful close: HTTP/2 `GOAWAY`; HTTP/1.1 closes once no request is in
    /// progress (at once when parked).
    fn graceful_shutdown(&mut self);

    /// Whether the connection is one that [`Served::park`] may park now.
    fn may_park(&self) -> bool {
        false
    }

    /// Lets hyper's connection go once it is idle, keeping the socket (see [`H1`]).
    fn park(&mut self) {}
}

fn log_ended(peer: SocketAddr, e: &hyper::Error) {
    tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
}

/// An HTTP/2 connection: served by hyper until it ends.
struct H2<C> {
    conn: Pin<Box<C>>,
    peer: SocketAddr,
}

impl<C> Future for H2<C>
where
    C: GracefulConnection<Error = hyper::Error>,
{
    type Output = Event;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event> {
        if let Err(e) = std::task::ready!(self.conn.as_mut().poll(cx)) {
            log_ended(self.peer, &e);
        }
        Poll::Ready(Event::Ended)
    }
}

impl<C> Served for H2<C>
where
    C: GracefulConnection<Error = hyper::Error>,
{
    fn graceful_shutdown(&mut self) {
        self.conn.as_mut().graceful_shutdown();
    }
}

/// An HTTP/1.1 connection, served by hyper or parked.
///
/// hyper's HTTP/1.1 connection keeps an 8 KiB buffer for the heads it writes from the start
/// and an 8 KiB read buffer from its first read, for as long as it lives (no setting makes
/// either smaller or lets them go while idle). So an idle connection is parked: hyper is
/// asked to close it as it would at shutdown, which on an idle connection closes at once
/// without a byte written, and is then taken apart without the socket being shut down
/// (`poll_without_shutdown`, `into_parts`). The socket waits for the client's next bytes in
/// [`Watched::poll_next_bytes`], and a new hyper connection serves them. What hyper had read
/// and not parsed (part of a pipelined request) is served to the next one first; a connection
/// that has such bytes is served again at once.
///
/// When: a connection is parked as soon as its answer is written if its client was quiet
/// before the request (the connection's first request, or one that woke a connection parked
/// for [`PARK_AFTER_MS`] or longer): such a client, an agent that pushes now and then, is
/// likely to be quiet again. Any other connection is parked once quiet for [`PARK_AFTER_MS`]
/// (the periodic check in [`Watch::drive`]). A client that sends again within that time
/// keeps hyper's connection: a busy one pays one extra hyper connection when it opens.
///
/// Invariants: the connection is parked only between requests, with the last answer written
/// to the socket ([`Activity`]: no request in progress, no head started, the last write not
/// pending, no shutdown begun), read on the connection's own task after hyper was polled
/// since the answer ended: hyper has then also settled what ended with the answer (a request
/// body let go unread is drained, or the connection closes). hyper's connection is done once
/// both its sides are closed, whether or not its last write went through (only its shutdown
/// waits for that, and parking skips it): without the write condition, the end of an answer
/// to a client that reads slowly would be lost. hyper asked to close an idle connection ends
/// on its next poll without reading the socket. One that does not end was still reading a
/// request body, and is left to close after that exchange ([`Mode::Closing`]); one that read
/// the socket as it ended had given up on a body, and gets the lingering close it would have
/// had: neither is parked with body bytes unread in the socket. A connection hyper ends for
/// any other reason (the client's `Connection: close` or end of input, an error) is polled as
/// hyper's future, which flushes and shuts the socket down as before (a lingering close, see
/// [`Watched`]).
struct H1<'a, I, S>
where
    S: HttpService<Incoming>,
{
    builder: &'a http1::Builder,
    peer: SocketAddr,
    activity: &'a Activity,
    connections: &'a Connections,
    state: H1State<'a, I, S>,
    /// Park as soon as the connection is idle (see above).
    eager: bool,
    /// Eager, idle, and polled once more before it parks (see [`H1::poll`]).
    settling: bool,
}

enum H1State<'a, I, S>
where
    S: HttpService<Incoming>,
{
    /// hyper serves it.
    Serving {
        conn: Box<http1::Connection<TokioIo<Watched<I>>, S>>,
        mode: Mode,
    },
    /// No hyper connection: waiting for the client's next bytes since `since_ms`.
    Parked {
        io: Watched<I>,
        service: S,
        since_ms: u64,
        _counted: ParkedConnection<'a>,
    },
    /// Shutting the socket down without hyper: a parked connection closed, or a park
    /// refused after hyper let go.
    Closing(Watched<I>),
    Ended,
}

/// What is asked of hyper's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Serve requests; it may be parked.
    Open,
    /// Let the socket go: asked to close while idle, it must end on its next poll.
    Parking,
    /// Close once no request is in progress (shutdown, idle, or a park that found a request
    /// body still in flight): hyper flushes and shuts the socket down.
    Closing,
}

impl<'a, I, S, B> H1<'a, I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The connection of a client that just connected (its first bytes arrived).
    fn new(
        builder: &'a http1::Builder,
        peer: SocketAddr,
        activity: &'a Activity,
        connections: &'a Connections,
        io: Watched<I>,
        service: S,
    ) -> Self {
        H1 {
            builder,
            peer,
            activity,
            connections,
            state: H1State::Serving {
                conn: Box::new(builder.serve_connection(TokioIo::new(io), service)),
                mode: Mode::Open,
            },
            eager: true,
            settling: false,
        }
    }

    /// A hyper connection serving `io` again.
    fn serve(&self, io: Watched<I>, service: S) -> H1State<'a, I, S> {
        H1State::Serving {
            conn: Box::new(self.builder.serve_connection(TokioIo::new(io), service)),
            mode: Mode::Open,
        }
    }

    /// After hyper let the socket go for parking.
    fn parked(&mut self, conn: http1::Connection<TokioIo<Watched<I>>, S>) {
        (self.eager, self.settling) = (false, false);
        // An idle hyper asked to close reads nothing: one that did was taking a request body
        // after its answer (and gave up on it, or there would be no end yet), and the rest of
        // that body may still come. A write left pending is checked before parking; seen here
        // it would mean hyper's unwritten bytes are gone with it.
        let read = self.activity.take_socket_read();
        let parts = conn.into_parts();
        let mut io = parts.io.into_inner();
        self.state = if read || io.at_eof() || io.output_blocked() {
            // Shut down as hyper would have: a lingering close discards what still comes.
            H1State::Closing(io)
        } else if !io.unread(parts.read_buf) {
            H1State::Parked {
                io,
                service: parts.service,
                since_ms: now_millis(),
                _counted: self.connections.parked(),
            }
        } else {
            self.serve(io, parts.service)
        };
    }

    /// Asks hyper to let the idle connection go (see [`H1::parked`]).
    fn ask_to_park(&mut self) {
        (self.eager, self.settling) = (false, false);
        if let H1State::Serving { conn, mode } = &mut self.state {
            *mode = Mode::Parking;
            self.activity.take_socket_read();
            Pin::new(conn.as_mut()).graceful_shutdown();
        }
    }
}

impl<I, S, B> Future for H1<'_, I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Event;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                H1State::Serving { conn, mode } => {
                    let polled = if *mode == Mode::Parking {
                        conn.poll_without_shutdown(cx)
                    } else {
                        Pin::new(conn.as_mut()).poll(cx)
                    };
                    match polled {
                        Poll::Pending if *mode == Mode::Parking => {
                            // hyper was not idle after all: a request body still in flight
                            // after its answer. Its keep-alive is off now: it closes the
                            // connection once that exchange ends, as it would have had it
                            // not been able to drain the body.
                            *mode = Mode::Closing;
                            return Poll::Pending;
                        }
                        Poll::Pending => {
                            if !this.eager || *mode != Mode::Open {
                                return Poll::Pending;
                            }
                            let o = this.activity.observe();
                            if o.in_flight != 0 || o.head_ms != 0 || o.output_blocked {
                                // A client that sent again within a poll is not a quiet one.
                                this.eager = !this.settling;
                                this.settling = false;
                                return Poll::Pending;
                            }
                            if !this.settling {
                                // The answer is written. hyper learns of what ended with it
                                // (the request's body let go unread, say) only on its next
                                // poll: park after that one.
                                this.settling = true;
                                cx.waker().wake_by_ref();
                                return Poll::Pending;
                            }
                            this.ask_to_park();
                        }
                        Poll::Ready(Err(e)) => {
                            log_ended(this.peer, &e);
                            this.state = H1State::Ended;
                            return Poll::Ready(Event::Ended);
                        }
                        Poll::Ready(Ok(())) if *mode != Mode::Parking => {
                            this.state = H1State::Ended;
                            return Poll::Ready(Event::Ended);
                        }
                        Poll::Ready(Ok(())) => {
                            let H1State::Serving { conn, .. } =
                                std::mem::replace(&mut this.state, H1State::Ended)
                            else {
                                unreachable!("matched above");
                            };
                            this.parked(*conn);
                        }
                    }
                }
                H1State::Parked { io, since_ms, .. } => {
                    let arrived = std::task::ready!(io.poll_next_bytes(cx));
                    // A client quiet for the park time is taken to be one that is quiet again.
                    this.eager = now_millis().saturating_sub(*since_ms) >= PARK_AFTER_MS;
                    this.settling = false;
                    let H1State::Parked { io, service, .. } =
                        std::mem::replace(&mut this.state, H1State::Ended)
                    else {
                        unreachable!("matched above");
                    };
                    match arrived {
                        Ok(n) if n > 0 => {
                            this.state = this.serve(io, service);
                            return Poll::Ready(Event::Unparked);
                        }
                        // End of input or an error: nothing to answer or to linger for.
                        _ => return Poll::Ready(Event::Ended),
                    }
                }
                H1State::Closing(io) => {
                    // Its error ends the connection as its success does.
                    let _ = std::task::ready!(Pin::new(io).poll_shutdown(cx));
                    this.state = H1State::Ended;
                    return Poll::Ready(Event::Ended);
                }
                H1State::Ended => return Poll::Ready(Event::Ended),
            }
        }
    }
}

impl<I, S, B> Served for H1<'_, I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(&mut self) {
        (self.eager, self.settling) = (false, false);
        match &mut self.state {
            H1State::Serving { conn, mode } => {
                *mode = Mode::Closing;
                Pin::new(conn.as_mut()).graceful_shutdown();
            }
            H1State::Parked { .. } => {
                let H1State::Parked { io, .. } = std::mem::replace(&mut self.state, H1State::Ended)
                else {
                    unreachable!("matched above");
                };
                self.state = H1State::Closing(io);
            }
            H1State::Closing(_) | H1State::Ended => {}
        }
    }

    fn may_park(&self) -> bool {
        matches!(
            self.state,
            H1State::Serving {
                mode: Mode::Open,
                ..
            }
        )
    }

    fn park(&mut self) {
        self.ask_to_park();
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
    /// [`PARK_AFTER_MS`] (checked every [`PARK_AFTER_MS`] while hyper serves it).
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
        let park_period = period.min(Duration::from_millis(PARK_AFTER_MS));
        let next_check = |parkable: bool| {
            let after = if parkable { park_period } else { period };
            crate::clock::deadline(tokio::time::Instant::now(), after)
        };
        let mut check = deadline::Alarm::at(next_check(conn.may_park()));
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
                    Event::Unparked => check.reset(next_check(true)),
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
                        Verdict::Keep => {
                            if !draining
                                && !closing
                                && conn.may_park()
                                && parkable(seen, now, PARK_AFTER_MS)
                            {
                                conn.park();
                            }
                        }
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
                    check.reset(next_check(conn.may_park()));
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
