//! Client connections over real sockets, as clients that misbehave or are merely idle see
//! them: keep-alive idleness, heads that never finish, the connection limit, HTTP/2 prefaces
//! that are wrong, and early answers to uploads still in flight (issue 10, items 6, 7, 10, 11).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use syncgate::{Config, Running, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const SECS5: Duration = Duration::from_secs(5);

/// `[server]` lines added to the test config.
fn with_server(cfg: String, lines: &str) -> String {
    cfg.replace("[admin]", &format!("{lines}\n\n[admin]"))
}

/// A GET on a keep-alive connection.
const GET: &[u8] = b"GET /v1/batch HTTP/1.1\r\nHost: push\r\nAuthorization: Bearer key-1\r\n\r\n";

/// Reads one HTTP/1.1 answer (head and `Content-Length` body); returns the head.
async fn read_answer<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(SECS5, s.read(&mut b))
            .await
            .expect("an answer in time")
            .expect("the connection stays up");
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = tokio::time::timeout(SECS5, s.read(&mut b))
            .await
            .expect("the body in time")
            .expect("read");
        assert!(n > 0, "closed inside the body");
        buf.extend_from_slice(&b[..n]);
    }
    head
}

/// Whether the server closed `s` (end of input or reset) within `within`.
async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut b = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn ready_proxy(server_lines: &str) -> (Running, Vec<syncgate::demo::SimWorker>) {
    let ws = workers(1).await;
    let cfg = with_server(pool_config(&[("w1", ws[0].addr())], "", ""), server_lines);
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    (running, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idles_until_idle_timeout_not_header_read_timeout() {
    let (running, _ws) =
        ready_proxy("header_read_timeout = \"200ms\"\nidle_timeout = \"1500ms\"").await;
    let proxy = running.proxy_addrs()[0];
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(GET).await.unwrap();
    assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
    // Idle for well over header_read_timeout (an observation window, not a wait for a
    // condition): hyper's header timer closed the connection here, and the next request
    // on it met a broken pipe.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Lower bounds on the server's timers are measured from before the step that starts them:
    // this task may run late after it.
    let idle_from = Instant::now();
    s.write_all(GET).await.unwrap();
    assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
    // Then the idle timeout closes it, gracefully.
    assert!(closed_within(&mut s, SECS5).await, "closed at idle_timeout");
    assert!(idle_from.elapsed() >= Duration::from_millis(1200));

    // A head that starts on a kept-alive connection is still bounded by header_read_timeout.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(GET).await.unwrap();
    assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    s.write_all(b"GET /v1/batch HT").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)).await, "cut");
    assert!(started.elapsed() >= Duration::from_millis(150));
    // So is a client that connects and says nothing.
    let mut silent = TcpStream::connect(proxy).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(2)).await);
    running.shutdown().await;
}

fn parked(running: &Running) -> u64 {
    running.shared().metrics.connections.parked_now()
}

/// Sends `request` on `s` and asserts the answer is a 200.
async fn answered_200(s: &mut TcpStream, request: &[u8]) {
    s.write_all(request).await.unwrap();
    assert!(read_answer(s).await.starts_with("HTTP/1.1 200"));
}

/// Asserts that the server cuts `s` (whose request head started after `started`, taken before
/// the write that started it) no sooner than `at_least` after `started` and within 3 s.
async fn cut_after(s: &mut TcpStream, started: Instant, at_least: Duration) {
    assert!(closed_within(s, Duration::from_secs(3)).await, "cut");
    assert!(started.elapsed() >= at_least);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_before_the_body_is_read_says_the_connection_closes() {
    let (running, _ws) = ready_proxy("max_request_body = \"1KiB\"").await;
    let proxy = running.proxy_addrs()[0];
    let says_close = |head: &str| {
        head.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n")
    };

    // A body read whole: the connection stays for the next request.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"POST /v1/batch HTTP/1.1\r\nHost: push\r\nAuthorization: Bearer key-1\r\n\
          Content-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!says_close(&head), "{head}");
    answered_200(&mut s, GET).await;

    // A declared body over the limit is answered before any of it is read: the answer says
    // the connection closes; what the client still sends is drained, never parsed.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /v1/batch HTTP/1.1\r\nHost: push\r\nContent-Length: 5000\r\n\r\n")
        .await
        .unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(says_close(&head), "{head}");
    let _ = s.write_all(GET).await;
    assert!(closed_within(&mut s, SECS5).await, "closed after the 413");

    // So is a chunked body found over the limit as it is read: 413 once its second chunk
    // comes, the rest unread.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let chunk = [b'x'; 800];
    s.write_all(b"POST /v1/batch HTTP/1.1\r\nHost: push\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..2 {
        s.write_all(b"320\r\n").await.unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(says_close(&head), "{head}");

    // So is one whose body does not all come within request_timeout (2 s here): 408. Sent
    // by an HTTP/1.0 client that asked for keep-alive: its HTTP/1.0 answer says close and
    // nothing of keep-alive (hyper would have added it: `close, keep-alive`).
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        b"POST /v1/batch HTTP/1.0\r\nHost: push\r\nConnection: keep-alive\r\n\
          Content-Length: 10\r\n\r\n{}",
    )
    .await
    .unwrap();
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.0 408"), "{head}");
    assert!(says_close(&head), "{head}");
    assert!(!head.to_ascii_lowercase().contains("keep-alive"), "{head}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_parked_and_serves_its_next_request() {
    let (running, _ws) =
        ready_proxy("header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"").await;
    let proxy = running.proxy_addrs()[0];
    let mut s = TcpStream::connect(proxy).await.unwrap();
    answered_200(&mut s, GET).await;
    wait_until(SECS5, "the idle connection parked", || async {
        parked(&running) == 1
    })
    .await;
    // The next request, in pieces: the first bytes wake the connection, hyper reads the rest.
    s.write_all(&GET[..10]).await.unwrap();
    wait_until(SECS5, "the connection served again", || async {
        parked(&running) == 0
    })
    .await;
    answered_200(&mut s, &GET[10..]).await;
    wait_until(SECS5, "parked again", || async { parked(&running) == 1 }).await;

    // A body some clients end with an empty line: the line is no request, and the connection
    // parks as any other.
    answered_200(
        &mut s,
        b"POST /v1/batch HTTP/1.1\r\nHost: push\r\nAuthorization: Bearer key-1\r\n\
          Content-Length: 2\r\n\r\nhi\r\n",
    )
    .await;
    wait_until(SECS5, "parked after the empty line", || async {
        parked(&running) == 1
    })
    .await;
    answered_200(&mut s, GET).await;
    wait_until(SECS5, "parked again", || async { parked(&running) == 1 }).await;

    // A head started on a parked connection is bounded by header_read_timeout.
    let started = Instant::now();
    s.write_all(b"GET /v1/batch HT").await.unwrap();
    cut_after(&mut s, started, Duration::from_millis(250)).await;
    wait_until(SECS5, "nothing parked", || async { parked(&running) == 0 }).await;

    // A pipelined request whose head hyper had read in part when the connection went quiet is
    // served once its client completes it, and its head is bounded like any other.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut two = GET.to_vec();
    two.extend_from_slice(&GET[..20]);
    answered_200(&mut s, &two).await;
    // Past the park time (an observation window): hyper's unparsed bytes are not lost.
    tokio::time::sleep(Duration::from_millis(200)).await;
    answered_200(&mut s, &GET[20..]).await;
    let started = Instant::now();
    answered_200(&mut s, &two).await;
    cut_after(&mut s, started, Duration::from_millis(250)).await;

    // At shutdown a parked connection is closed, after the grace for a request on its way.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    answered_200(&mut s, GET).await;
    wait_until(SECS5, "parked", || async { parked(&running) == 1 }).await;
    let stopped = tokio::spawn(running.shutdown());
    assert!(closed_within(&mut s, SECS5).await, "closed at shutdown");
    tokio::time::timeout(SECS5, stopped)
        .await
        .expect("shut down in time")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_the_connection_idle_longest_makes_room() {
    // Timeouts far beyond the test: only the reclaim can free a slot in time.
    let (running, ws) =
        ready_proxy("max_connections = 3\nheader_read_timeout = \"60s\"\nidle_timeout = \"60s\"")
            .await;
    let proxy = running.proxy_addrs()[0];
    // Three idle keep-alive connections, the first idle longest.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(GET).await.unwrap();
        assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
        idle.push(s);
        tokio::time::sleep(Duration::from_millis(20)).await; // distinct idle times
    }
    // A newcomer is served at once instead of waiting for a minute.
    let mut newcomer = TcpStream::connect(proxy).await.unwrap();
    newcomer.write_all(GET).await.unwrap();
    assert!(read_answer(&mut newcomer).await.starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle[0], SECS5).await,
        "the idlest made room"
    );
    assert!(
        !closed_within(&mut idle[1], Duration::from_millis(200)).await,
        "one connection was enough"
    );
    drop(newcomer);
    drop(idle);
    // Until the proxy has seen those close they still hold slots, and the reclaims below
    // could go to them instead of the connections this stage means.
    wait_until(SECS5, "the proxy saw its clients close", || async {
        running.shared().metrics.connections.counts().0 == 0
    })
    .await;

    // Clients that connect and send nothing are idle too (after a second of silence: one that
    // just connected is about to send its request), and so are idle HTTP/2 connections.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(proxy).await.unwrap());
    }
    // Their second of silence counts from when the proxy registered them, which may be
    // later than connect returned here.
    wait_until(SECS5, "the silent connections registered", || async {
        running.shared().metrics.connections.counts().0 == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // their second of silence
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let h2_closed = tokio::spawn(h2_conn);
    let resp = h2
        .send_request(
            http::Request::get(format!("http://{proxy}/v1/batch"))
                .header("authorization", "Bearer key-1")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap();
    // Three newcomers, kept open: each makes room by closing the idlest (the silent ones were
    // idle since they connected, the HTTP/2 one since its request).
    let mut newcomers = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(GET).await.unwrap();
        assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 200"));
        newcomers.push(s);
    }
    for s in &mut silent {
        assert!(closed_within(s, SECS5).await);
    }
    tokio::time::timeout(SECS5, h2_closed)
        .await
        .expect("the idle HTTP/2 connection got GOAWAY and closed")
        .unwrap()
        .unwrap();
    drop(newcomers);

    // When every connection is busy, a newcomer waits for one to finish; none is cut.
    ws[0].set_delay(Duration::from_millis(600));
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(proxy).await.unwrap();
            s.write_all(GET).await.unwrap();
            read_answer(&mut s).await
        }));
    }
    wait_until(SECS5, "three requests in flight", || async {
        running
            .shared()
            .snapshot()
            .backends()
            .map(|b| b.in_flight())
            .sum::<u64>()
            == 3
    })
    .await;
    let mut late = TcpStream::connect(proxy).await.unwrap();
    late.write_all(GET).await.unwrap();
    assert!(read_answer(&mut late).await.starts_with("HTTP/1.1 200"));
    for b in busy {
        assert!(b.await.unwrap().starts_with("HTTP/1.1 200"));
    }
    running.shutdown().await;
}

/// Reads frames until the server closes; returns `(type, payload)` of each.
async fn read_frames<S: AsyncRead + Unpin>(s: &mut S) -> Vec<(u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(SECS5, s.read_to_end(&mut bytes)).await;
    assert!(read.is_ok(), "the server closes the connection");
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let end = (9 + len).min(rest.len());
        frames.push((rest[3], rest[9..end].to_vec()));
        rest = &rest[end..];
    }
    frames
}

/// A `GOAWAY` (type 7) whose error code is `PROTOCOL_ERROR` (1).
fn is_protocol_error_goaway((kind, payload): &(u8, Vec<u8>)) -> bool {
    *kind == 7 && payload.len() >= 8 && payload[4..8] == [0, 0, 0, 1]
}

async fn write_then_frames<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
) -> Vec<(u8, Vec<u8>)> {
    s.write_all(bytes).await.unwrap();
    read_frames(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_http2_preface_gets_goaway_protocol_error_in_cleartext_and_over_tls() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    let root: CertificateDer<'static> = ck.cert.der().clone();
    let cfg = with_server(
        pool_config(&[("w1", ws[0].addr())], "", ""),
        "[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"cert.pem\"\nkey = \"key.pem\"",
    );
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, cfg).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    wait_state(&running, "w1", State::Ready).await;

    // Cleartext, prior knowledge: the preface goes wrong in its last byte.
    let mut s = TcpStream::connect(running.proxy_addrs()[0]).await.unwrap();
    let frames = write_then_frames(&mut s, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\rQ").await;
    assert_eq!(
        frames.first().map(|f| f.0),
        Some(4),
        "SETTINGS first: {frames:?}"
    );
    assert!(frames.iter().any(is_protocol_error_goaway), "{frames:?}");
    drop(s); // ends the server's lingering close

    // TLS with ALPN h2: h2spec's invalid preface.
    let mut tls = tls_connect(running.tls_addrs()[0], &root, b"h2").await;
    let frames = write_then_frames(&mut tls, b"INVALID CONNECTION PREFACE\r\n\r\n").await;
    assert!(frames.iter().any(is_protocol_error_goaway), "{frames:?}");
    drop(tls);

    // The right preface still works, and HTTP/1.1 over TLS too.
    let tls = tls_connect(running.tls_addrs()[0], &root, b"h2").await;
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = h2
        .send_request(
            http::Request::get("https://localhost/v1/batch")
                .header("authorization", "Bearer key-1")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut tls = tls_connect(running.tls_addrs()[0], &root, b"http/1.1").await;
    tls.write_all(GET).await.unwrap();
    assert!(read_answer(&mut tls).await.starts_with("HTTP/1.1 200"));
    // An idle HTTP/1.1 connection over TLS is parked and serves its next request too.
    wait_until(SECS5, "the TLS connection parked", || async {
        parked(&running) == 1
    })
    .await;
    tls.write_all(GET).await.unwrap();
    assert!(read_answer(&mut tls).await.starts_with("HTTP/1.1 200"));
    running.shutdown().await;
}

async fn tls_connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// A pool whose only backend never becomes ready (nothing listens on its port), a route for
/// `/v1` only, and the default 8 MiB body limit.
async fn unready_proxy(server_lines: &str) -> Running {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let cfg = with_server(pool_config(&[("w1", addr)], "", ""), server_lines)
        + "\n[[routes]]\npath_prefix = \"/v1\"\npool = \"push\"\n";
    start(&cfg).await
}

/// Writes a request head and `body_len` bytes of body in one go, without reading, as
/// Python's `http.client` does; then reads the answer.
async fn upload_then_read(proxy: SocketAddr, path: &str, body_len: usize) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    upload_then_read_on(&mut s, path, body_len).await
}

/// [`upload_then_read`] on a connection already open.
async fn upload_then_read_on(s: &mut TcpStream, path: &str, body_len: usize) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: push\r\nAuthorization: Bearer key-1\r\n\
         Content-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + body_len, b'x');
    tokio::time::timeout(SECS5, s.write_all(&request))
        .await
        .expect("the upload is read in time")
        .expect("the upload is not cut off by a reset");
    read_answer(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_a_client_still_uploading() {
    let running = unready_proxy("").await;
    let proxy = running.proxy_addrs()[0];
    // No ready backend and a 3 MB push, far more than the socket buffers hold: the client is
    // still writing when the answer goes out (it met a reset, three times out of three).
    let head = upload_then_read(proxy, "/v1/batch", 3_000_000).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // A body over max_request_body (8 MiB): 413 at once from its Content-Length.
    let head = upload_then_read(proxy, "/v1/batch", 17 << 19).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // No route.
    let head = upload_then_read(proxy, "/elsewhere", 3_000_000).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // On a keep-alive connection that was parked: the rest of the body is no request.
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(GET).await.unwrap();
    assert!(read_answer(&mut s).await.starts_with("HTTP/1.1 503"));
    wait_until(SECS5, "parked", || async { parked(&running) == 1 }).await;
    // Quiet for longer than the park time (the stimulus: its next answer parks it at once).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let head = upload_then_read_on(&mut s, "/v1/batch", 3_000_000).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // Nothing else: no answer to body bytes taken for a request.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(SECS5, s.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_expects_100_continue_gets_the_early_answer_without_sending_its_body() {
    let running = unready_proxy("").await;
    let mut s = TcpStream::connect(running.proxy_addrs()[0]).await.unwrap();
    // A body small enough to be read for a replay: it is still not asked for, as no backend
    // could take it.
    s.write_all(
        b"POST /v1/batch HTTP/1.1\r\nHost: push\r\nAuthorization: Bearer key-1\r\n\
          Content-Length: 2000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_answer(&mut s).await;
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "no 100 Continue first: {head}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_in_the_upload_longer_than_header_read_timeout_does_not_lose_the_answer() {
    let running = unready_proxy("header_read_timeout = \"100ms\"").await;
    let mut s = TcpStream::connect(running.proxy_addrs()[0]).await.unwrap();
    let body_len = 3_000_000;
    let mut first = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: push\r\nAuthorization: Bearer key-1\r\n\
         Content-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    first.resize(first.len() + body_len / 3, b'x');
    s.write_all(&first).await.unwrap();
    // A slow link stalls for longer than header_read_timeout (the stimulus, not a wait for a
    // condition). The bytes of the abandoned body are no request head, and the lingering
    // close must not be cut as one.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rest = vec![b'x'; body_len - body_len / 3];
    tokio::time::timeout(SECS5, s.write_all(&rest))
        .await
        .expect("the rest of the upload is read")
        .expect("no reset");
    let head = read_answer(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    drop(s);
    running.shutdown().await;
}
