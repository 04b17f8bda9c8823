//! The upstream HTTP/1.1 client as a worker sees it: syncgate in-process in front of a raw TCP
//! worker that writes its answers byte by byte, so that framing, keep-alive and early answers
//! are what the test says and not what an HTTP library would do.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use syncgate::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

/// A request as the raw worker read it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

/// A raw worker: answers `/ready` with 200, and any other path as `answer` says (told the
/// serial number of the connection).
struct RawWorker {
    addr: SocketAddr,
}

/// What the raw worker does with a request: the bytes it writes, and whether it then closes.
type Answerer = fn(&Seen, usize) -> (Vec<u8>, bool);

impl RawWorker {
    async fn start(answer: Answerer) -> RawWorker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let serial = counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, serial, answer));
            }
        });
        RawWorker { addr }
    }
}

/// Reads requests off `s` (heads, and bodies by `content-length` or `chunked`; `/early`'s
/// body is not read) and answers each.
async fn serve(mut s: TcpStream, serial: usize, answer: Answerer) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        buf.drain(..head_end);
        let mut body = Vec::new();
        if head.starts_with("get /ready") {
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(ok).await.is_err() {
                return;
            }
            continue;
        }
        if !head.contains(" /early") {
            if let Some(len) = header(&head, "content-length") {
                let len: usize = len.parse().unwrap();
                while buf.len() < len {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                body = buf.drain(..len).collect();
            } else if header(&head, "transfer-encoding").as_deref() == Some("chunked") {
                // The raw chunked bytes, up to and with the last chunk.
                while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let end = buf.windows(5).position(|w| w == b"0\r\n\r\n").unwrap() + 5;
                body = buf.drain(..end).collect();
            }
        }
        let (bytes, close) = answer(&Seen { head, body }, serial);
        if s.write_all(&bytes).await.is_err() {
            return;
        }
        if close {
            // A lingering close, as real servers do: unread input would reset the connection
            // and destroy the answer before the proxy reads it.
            let _ = s.shutdown().await;
            let mut sink = [0u8; 65536];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_string())
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn proxy_for(worker: &RawWorker) -> syncgate::Running {
    let cfg = pool_config(
        &[("w1", worker.addr)],
        "",
        "contract = \"status\"\nrise = 1",
    );
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_answers_reuse_one_connection_whatever_their_framing() {
    let worker = RawWorker::start(|seen, serial| {
        let answer = if seen.head.contains(" /chunked") {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec()
        } else if seen.head.contains(" /empty") {
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
        } else {
            ok(&format!("conn {serial}"))
        };
        (answer, false)
    })
    .await;
    let running = proxy_for(&worker).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    let mut serials = Vec::new();
    for path in ["/a", "/chunked", "/b", "/empty", "/c", "/chunked", "/d"] {
        let a = send(&c, proxy, "GET", path, None, Bytes::new())
            .await
            .unwrap();
        match path {
            "/chunked" => {
                assert_eq!(a.body, "hello world");
                assert!(!a.headers.contains_key("x-trailer"));
            }
            "/empty" => assert_eq!(a.status, 204),
            _ => serials.push(a.body),
        }
    }
    // One request at a time: each went back to the pool and the next took it again.
    assert!(
        serials.windows(2).all(|w| w[0] == w[1]),
        "connections: {serials:?}"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_by_close_is_read_to_the_end_and_its_connection_not_reused() {
    let worker = RawWorker::start(|_, serial| {
        let body = format!("until close on {serial}");
        (format!("HTTP/1.1 200 OK\r\n\r\n{body}").into_bytes(), true)
    })
    .await;
    let running = proxy_for(&worker).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    let a = send(&c, proxy, "GET", "/x", None, Bytes::new())
        .await
        .unwrap();
    let b = send(&c, proxy, "GET", "/x", None, Bytes::new())
        .await
        .unwrap();
    assert!(a.body.starts_with(b"until close on "));
    assert_ne!(
        a.body, b.body,
        "a connection framed by its close is not reused"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_go_with_their_length_or_chunked_when_it_is_unknown() {
    let worker = RawWorker::start(|seen, _| {
        let framing = match header(&seen.head, "transfer-encoding") {
            Some(te) => format!("te={te}"),
            None => format!(
                "cl={}",
                header(&seen.head, "content-length").unwrap_or_default()
            ),
        };
        let body = format!("{framing} body={}", String::from_utf8_lossy(&seen.body));
        (ok(&body), false)
    })
    .await;
    // Bodies above 16 bytes stream (and go chunked when the client did not say their length).
    let cfg = pool_config(
        &[("w1", worker.addr)],
        "[pools.push.guard]\nmax_replay_body = 16",
        "contract = \"status\"\nrise = 1",
    );
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    let small = send(&c, proxy, "POST", "/in", None, Bytes::from("tiny"))
        .await
        .unwrap();
    assert_eq!(small.body, "cl=4 body=tiny");
    let large = "x".repeat(40);
    let sized = send(&c, proxy, "POST", "/in", None, Bytes::from(large.clone()))
        .await
        .unwrap();
    assert_eq!(sized.body, format!("cl=40 body={large}"));
    // A chunked upload of unknown length.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..3)
        .map(|i| {
            Ok(http_body::Frame::data(Bytes::from(format!(
                "part{i}-{}",
                "y".repeat(10)
            ))))
        })
        .collect();
    let body = Parts(chunks.into());
    let req = http::Request::post(format!("http://{proxy}/in"))
        .body(body)
        .unwrap();
    let streaming =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = streaming.request(req).await.unwrap();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text).to_string();
    assert!(text.starts_with("te=chunked body="), "{text}");
    // The chunks as the worker read them decode to the upload.
    let raw = text.trim_start_matches("te=chunked body=");
    let mut decoded = String::new();
    let mut rest = raw;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size, 16).unwrap();
        if n == 0 {
            break;
        }
        decoded.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    assert_eq!(decoded, "part0-yyyyyyyyyypart1-yyyyyyyyyypart2-yyyyyyyyyy");
    running.shutdown().await;
}

/// A request body of these frames, of unknown length.
struct Parts(std::collections::VecDeque<Result<http_body::Frame<Bytes>, std::io::Error>>);

impl http_body::Body for Parts {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(self.get_mut().0.pop_front())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_answers_before_reading_the_body_is_heard() {
    let worker = RawWorker::start(|seen, _| {
        if seen.head.contains(" /early") {
            let body = "too large";
            let answer = format!(
                "HTTP/1.1 413 Payload Too Large\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            return (answer.into_bytes(), true);
        }
        (ok("fine"), false)
    })
    .await;
    // A body larger than the loopback sockets' buffers can hold between the proxy and a worker
    // that does not read it (up to about 10 MB): the proxy cannot read it all from the client
    // before the answer, however late the worker's task runs.
    let cfg = pool_config(
        &[("w1", worker.addr)],
        "",
        "contract = \"status\"\nrise = 1",
    )
    .replace(
        "request_timeout = \"2s\"",
        "request_timeout = \"2s\"\nmax_request_body = \"32MiB\"",
    );
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    let big = Bytes::from(vec![b'z'; 24 << 20]);
    let cfg_limit = send(&c, proxy, "POST", "/early", None, big).await.unwrap();
    assert_eq!(cfg_limit.status, 413, "{:?}", cfg_limit.body);
    assert_eq!(cfg_limit.body, "too large");
    // The rest of the client's body is never read: the answer says the connection closes, so
    // the client does not send its next request on it (it did, now and then, and got an
    // incomplete message when the server closed it).
    assert_eq!(
        cfg_limit.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let after = send(&c, proxy, "GET", "/fine", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(after.body, "fine");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_closes_or_garbles_its_answer_is_a_502() {
    let worker = RawWorker::start(|seen, _| {
        if seen.head.contains(" /eof") {
            (Vec::new(), true)
        } else if seen.head.contains(" /short") {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
                true,
            )
        } else if seen.head.contains(" /garbled") {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec(),
                false,
            )
        } else {
            (ok("fine"), false)
        }
    })
    .await;
    let running = proxy_for(&worker).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    for path in ["/eof", "/garbled"] {
        let a = send(&c, proxy, "GET", path, None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(a.status, 502, "{path}");
    }
    // A body cut short is noticed after the head went out: the client's answer breaks.
    let cut = send(&c, proxy, "GET", "/short", None, Bytes::new()).await;
    assert!(cut.map_or(true, |a| a.body.len() < 10));
    let after = send(&c, proxy, "GET", "/fine", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(after.body, "fine");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_worker_closed_is_not_used() {
    // Every answer closes its connection after it, but says keep-alive: the proxy pools it,
    // and must find it closed before reusing it.
    let worker = RawWorker::start(|_, serial| (ok(&format!("conn {serial}")), true)).await;
    let running = proxy_for(&worker).await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    let a = send(&c, proxy, "GET", "/a", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    // The worker's close reaches the proxy.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let b = send(&c, proxy, "GET", "/b", None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(b.status, 200, "{:?}", b.body);
        assert_ne!(a.body, b.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_body_that_stalls_is_cut_after_request_timeout_and_its_connection_closed() {
    let worker = RawWorker::start(|seen, serial| {
        if seen.head.contains(" /stall") {
            // Ten bytes promised, five sent, then nothing: the connection stays open.
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello".to_vec(),
                false,
            )
        } else {
            (ok(&format!("conn {serial}")), false)
        }
    })
    .await;
    let cfg = pool_config(
        &[("w1", worker.addr)],
        "",
        "contract = \"status\"\nrise = 1",
    )
    .replace("request_timeout = \"2s\"", "request_timeout = \"300ms\"");
    let running = start(&cfg).await;
    wait_state(&running, "w1", State::Ready).await;
    let proxy = running.proxy_addrs()[0];

    let mut s = TcpStream::connect(proxy).await.unwrap();
    // Taken before the write: the proxy's timer may start before this task runs again.
    let started = std::time::Instant::now();
    s.write_all(b"GET /stall HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stalled answer was never cut");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("\r\n\r\nhello"),
        "what came before the stall: {text}"
    );
    assert!(took >= Duration::from_millis(250), "cut after {took:?}");

    // The next request is answered whole (the stalled connection, out of step, was not put
    // back in the pool: its five missing bytes would have been read from the next answer).
    let c = client();
    let a = send(&c, proxy, "GET", "/x", None, Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(a.body.starts_with(b"conn "), "{:?}", a.body);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_to_a_client_that_reads_late_arrives_whole_on_a_connection_kept_alive() {
    const BIG: usize = 24 << 20;
    let worker = RawWorker::start(|seen, _| {
        let answer = if seen.head.contains(" /big") {
            let mut a = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n").into_bytes();
            a.resize(a.len() + BIG, b'b');
            a
        } else {
            ok("small")
        };
        (answer, false)
    })
    .await;
    let running = proxy_for(&worker).await;
    let proxy = running.proxy_addrs()[0];
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: push\r\n\r\n")
        .await
        .unwrap();
    // The client reads nothing for several park times (the stimulus: an answer far larger
    // than the socket buffers, stuck in them): the connection must not be parked with the
    // end of the answer still unwritten.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let body_len = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the answer keeps coming")
            .unwrap();
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() - (i + 4) >= BIG {
                break got.len() - (i + 4);
            }
        }
    };
    assert_eq!(body_len, BIG, "exactly the answer, nothing after it");
    // Then the connection serves the next request.
    s.write_all(b"GET /small HTTP/1.1\r\nhost: push\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"small") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the next answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    running.shutdown().await;
}
