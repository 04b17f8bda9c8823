//! hyper's connection as [`super::connection`]'s drive loop steers it ([`Served`]): an HTTP/2
//! connection ([`H2`]) is served by hyper until it ends; an HTTP/1.1 connection ([`H1`]) is
//! served by hyper or parked, without hyper's buffers, while its client is quiet.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};

use super::io::Watched;
use crate::clock::now_millis;
use crate::conn::{Activity, PARK_AFTER_MS};
use crate::metrics::{Connections, ParkedConnection};

/// What a served connection's future reports to the drive loop.
pub(super) enum Event {
    /// The connection is over.
    Ended,
    /// A parked HTTP/1.1 connection is served by hyper again.
    Unparked,
}

/// hyper's connection as the drive loop steers it.
pub(super) trait Served: Future<Output = Event> + Unpin {
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
pub(super) struct H2<C> {
    pub conn: Pin<Box<C>>,
    pub peer: SocketAddr,
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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What hyper needs of a service to serve an HTTP/1.1 connection, poll it without shutting
/// its socket down, and take it apart (every service whose futures are `Unpin`).
pub(super) trait H1Service:
    HttpService<
        Incoming,
        ResBody: Body<Error: Into<BoxError>> + 'static,
        Future: Unpin,
        Error: Into<BoxError>,
    > + Unpin
{
}

impl<S> H1Service for S where
    S: HttpService<
            Incoming,
            ResBody: Body<Error: Into<BoxError>> + 'static,
            Future: Unpin,
            Error: Into<BoxError>,
        > + Unpin
{
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
/// likely to be quiet again. Any other connection is parked once quiet for [`PARK_AFTER_MS`],
/// found by the connection's periodic check (`connection.rs`: [`PARK_AFTER_MS`] after hyper
/// begins to serve it, then at doubling intervals while it stays busy). A client that sends
/// again within that time keeps hyper's connection: a busy one pays one extra hyper
/// connection when it opens.
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
/// had: neither is parked with body bytes unread in the socket. (hyper's drain of a body let
/// go may also take bytes already in its own buffer without a read; it has done so before
/// the park is asked because hyper is polled after the body is dropped and before the park:
/// bodies are dropped on the connection's own thread, the proxy's runtimes being
/// current-thread ones.) A connection hyper ends for
/// any other reason (the client's `Connection: close` or end of input, an error) is polled as
/// hyper's future, which flushes and shuts the socket down as before (a lingering close, see
/// [`Watched`]).
pub(super) struct H1<'a, I, S>
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

impl<'a, I, S> H1<'a, I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: H1Service,
{
    /// The connection of a client that just connected (its first bytes arrived).
    pub(super) fn new(
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

impl<I, S> Future for H1<'_, I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: H1Service,
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
                            if !this.activity.observe().between_requests() {
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

impl<I, S> Served for H1<'_, I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: H1Service,
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
