//! The floor: the least a hyper 1.x reverse proxy does per request, as a reference for
//! `benches/compare.sh`. One current-thread runtime; each client connection gets its own
//! upstream HTTP/1.1 connection (no shared pool), and each request goes to it unchanged, its
//! answer back unchanged: no routing, no readiness, no guard, no forwarding headers, no
//! timeouts, no metrics. What syncgate costs above it is what syncgate itself does.
//!
//! With `--idle-thread`, the process also starts a thread that never runs: a process of more
//! than one thread pays on every syscall (the kernel counts references to the file it acts
//! on, glibc marks the call a cancellation point), and syncgate, with its control plane and
//! file watcher on threads of their own, always has more than one.
//!
//!     cargo run --release --example floor -- 127.0.0.1:18079 127.0.0.1:18090 [--idle-thread]

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
    let (sender, conn) = client::handshake(TokioIo::new(upstream_io)).await?;
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
        .serve_connection(TokioIo::new(client_io), service)
        .await
}
