//! The floor: about the least a hyper 1.x reverse proxy does per request, as a reference
//! for `benches/compare.sh`. One current-thread runtime; each client connection gets its own
//! upstream HTTP/1.1 connection (no shared pool), and each request goes to it unchanged, its
//! answer back unchanged: no routing, no readiness, no guard, no forwarding headers, no
//! timeouts, no metrics. Heads and bodies go out in one write each (`writev(false)`), as
//! syncgate's do (`src/gather.rs`). Not quite the least: the tasks run in a `LocalSet` (the
//! service shares the upstream sender through an `Rc`), one more queue per wake-up than
//! syncgate's tasks go through; and syncgate drives its upstream connection in the request's
//! own task, where the floor spawns hyper's client connection task. What syncgate costs above
//! the floor is what it does beyond forwarding, net of what it does differently.
//!
//! With `--idle-thread`, the process also starts a thread that stays parked: in a process of
//! more than one thread every syscall on a socket pays more (the kernel takes and drops a
//! reference to the socket's file instead of borrowing it, and glibc brackets a `send` or a
//! `recv`, cancellation points, with its bookkeeping). syncgate's process always has more
//! than one: its control plane and its file watcher run on threads of their own.
//!
//!     cargo run --release --example floor -- 127.0.0.1:18079 127.0.0.1:18080 [--idle-thread]

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), idle_thread) = (
        args.next(),
        args.next(),
        args.next().as_deref() == Some("--idle-thread"),
    ) else {
        eprintln!("usage: floor LISTEN_ADDR UPSTREAM_ADDR [--idle-thread]");
        std::process::exit(2);
    };
    if idle_thread {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    let listen: SocketAddr = listen.parse().expect("LISTEN_ADDR");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM_ADDR");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let (client_io, _) = listener.accept().await?;
            tokio::task::spawn_local(async move {
                if let Err(e) = proxy(client_io, upstream).await {
                    eprintln!("connection: {e}");
                }
            });
        }
    })
}

/// Serves one client connection over its own upstream connection.
async fn proxy(client_io: TcpStream, upstream: SocketAddr) -> hyper::Result<()> {
    client_io.set_nodelay(true).ok();
    let upstream_io = TcpStream::connect(upstream)
        .await
        .expect("upstream connect");
    upstream_io.set_nodelay(true).ok();
    let (sender, conn) = client::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(upstream_io))
        .await?;
    tokio::task::spawn_local(conn);
    // One request at a time on an HTTP/1.1 connection: each borrow ends before an await.
    let sender = Rc::new(RefCell::new(sender));
    let service = service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            poll_fn(|cx| sender.borrow_mut().poll_ready(cx)).await?;
            let answer = sender.borrow_mut().send_request(req);
            answer.await
        }
    });
    server::Builder::new()
        .writev(false)
        .serve_connection(TokioIo::new(client_io), service)
        .await
}
