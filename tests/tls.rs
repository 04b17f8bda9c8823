//! HTTPS listeners: rustls with ALPN h2 and http/1.1, and certificate reload on file change.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use syncgate::demo::SimWorker;
use syncgate::Config;
use syncgate::State;
use tokio::net::TcpStream;

use support::*;

fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    ck.cert.der().clone()
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects with TLS trusting only `root`, offering `alpn`; returns the stream and the
/// certificate the server presented.
async fn connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> (Tls, CertificateDer<'static>) {
    try_connect(addr, root, alpn).await.expect("TLS handshake")
}

async fn try_connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> std::io::Result<(Tls, CertificateDer<'static>)> {
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
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, presented))
}

fn request() -> http::Request<Empty<Bytes>> {
    http::Request::get("https://localhost/echo")
        .header("authorization", "Bearer key-1")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_h1_and_h2_and_reloads_its_certificate() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let text = pool_config(&[("w1", ws[0].addr())], "", "").replace(
        "[admin]",
        "[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n[admin]",
    );
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, &text).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    wait_state(&running, "w1", State::Ready).await;
    let addr = running.tls_addrs()[0];

    // HTTP/1.1 over TLS; the worker is told the client used https.
    let (tls, presented) = connect(addr, &first, b"http/1.1").await;
    assert_eq!(presented, first);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(request()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");

    // HTTP/2 negotiated by ALPN.
    let (tls, _) = connect(addr, &first, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert_eq!(send.send_request(request()).await.unwrap().status(), 200);

    // A broken key file: the current certificate stays, the error is reported.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    assert!(running.control().reload("api").await.is_err());
    assert!(running.control().status().last_error.is_some());
    let (_, presented) = connect(addr, &first, b"http/1.1").await;
    assert_eq!(presented, first);

    // A valid key of another pair, with a config change beside it: the key does not match
    // the certificate, so neither the certificate nor the config is applied.
    let generation = running.control().status().generation;
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("key.pem"), other.key_pair.serialize_pem()).unwrap();
    std::fs::write(&path, text.replace("slow_start", "retries = 5\nslow_start")).unwrap();
    let errors = running.control().reload("api").await.unwrap_err();
    assert!(
        errors[0].message.contains("does not match the certificate"),
        "{errors:?}"
    );
    // Reported at the config's `key =` line, since the config changed too.
    assert!(errors[0].file.ends_with("syncgate.toml"), "{errors:?}");
    assert_eq!(errors[0].line, 11, "{errors:?}");
    assert_eq!(running.control().status().generation, generation);
    assert_eq!(running.shared().snapshot().pool("push").unwrap().retries, 2);
    let (_, presented) = connect(addr, &first, b"http/1.1").await;
    assert_eq!(presented, first);

    // New files: the next handshake presents the new certificate (seen by the file watcher).
    let second = write_cert(dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // Until the reload, the old certificate fails verification against the new root.
        if let Ok((_, presented)) = try_connect(addr, &second, b"http/1.1").await {
            assert_eq!(presented, second);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "certificate not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await;
}

/// A TLS front for a plain worker: terminates TLS with `cert`/`key` and pipes the bytes to
/// `worker`, so the worker is reached only over TLS. A `slow` front reads what the proxy
/// sends 16 KiB at a time with a pause between reads, so that the proxy's writes block.
async fn tls_front(worker: SocketAddr, cert_pem: &str, key_pem: &str, slow: bool) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if slow {
        // A small window: the proxy's writes block instead of filling large socket buffers.
        socket.set_recv_buffer_size(4096).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(worker).await else {
                    return;
                };
                if !slow {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    return;
                }
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut tls_read, mut tls_write) = tokio::io::split(tls);
                let (mut plain_read, mut plain_write) = plain.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut plain_read, &mut tls_write).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = tls_read.read(&mut buf).await {
                    if plain_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
        }
    });
    addr
}

/// A worker reached through a TLS front ([`tls_front`]) whose certificate names
/// `worker.internal`, and a directory holding that certificate as `workers-ca.pem`.
async fn tls_worker(slow: bool) -> (Vec<SimWorker>, SocketAddr, tempfile::TempDir) {
    let ws = workers(1).await;
    let ck = rcgen::generate_simple_self_signed(vec!["worker.internal".to_string()]).unwrap();
    let front = tls_front(
        ws[0].addr(),
        &ck.cert.pem(),
        &ck.key_pair.serialize_pem(),
        slow,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("workers-ca.pem"), ck.cert.pem()).unwrap();
    (ws, front, dir)
}

/// `config` with an `[pools.push.upstream_tls]` section trusting `workers-ca.pem` and
/// expecting `server_name`.
fn with_upstream_tls(config: String, server_name: &str) -> String {
    config.replace(
        "[pools.push.probe]",
        &format!("[pools.push.upstream_tls]\nca = \"workers-ca.pem\"\nserver_name = \"{server_name}\"\n\n[pools.push.probe]"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_probed_and_reached_over_tls() {
    let (ws, front, dir) = tls_worker(false).await;
    let text =
        |server_name: &str| with_upstream_tls(pool_config(&[("w1", front)], "", ""), server_name);
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, text("worker.internal")).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    wait_state(&running, "w1", State::Ready).await;
    let a = get(&client(), running.proxy_addrs()[0], 1).await;
    assert_eq!(a.status, 200);
    assert_eq!(ws[0].requests(), 1);
    running.shutdown().await;

    // A worker whose certificate does not match the expected name is never admitted.
    std::fs::write(&path, text("other.internal")).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    wait_until(Duration::from_secs(5), "a failed TLS probe", || async {
        let snap = running.shared().snapshot();
        let b = snap.backends().next().unwrap();
        let r = b.info().reason.clone();
        r.starts_with("TLS handshake failed")
    })
    .await;
    assert_eq!(state_of(&running, "w1"), Some(State::Pending));
    running.shutdown().await;

    // A reload that changes the TLS settings: the connection pooled under the old ones is
    // not reused, so the request goes nowhere the new settings would refuse.
    std::fs::write(&path, text("worker.internal")).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    wait_state(&running, "w1", State::Ready).await;
    let c = client();
    assert_eq!(get(&c, running.proxy_addrs()[0], 1).await.status, 200);
    let served = ws[0].requests();
    std::fs::write(&path, text("other.internal")).unwrap();
    running.control().reload("api").await.unwrap();
    let a = get(&c, running.proxy_addrs()[0], 1).await;
    assert_ne!(
        a.status, 200,
        "sent over a connection the new TLS settings refuse"
    );
    assert_eq!(ws[0].requests(), served);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_reaches_a_slow_tls_worker_whole() {
    // tokio-rustls takes bytes it cannot write yet; the last of them go out only with a flush
    // (`upstream/conn.rs` flushes once the request is written). Bodies buffered whole and
    // streamed, through a worker that reads slowly behind a small window.
    let (_ws, front, dir) = tls_worker(true).await;
    // Probes that tolerate a proxy thread busy encrypting megabytes (a debug build is slow):
    // this test is about the body, not about ejection.
    let text = with_upstream_tls(
        pool_config(
            &[("w1", front)],
            "",
            "interval = \"200ms\"\ntimeout = \"2s\"\nfall = 10",
        ),
        "worker.internal",
    );
    let path = dir.path().join("syncgate.toml");
    std::fs::write(&path, text).unwrap();
    let running = syncgate::start(Config::load(&path).unwrap()).await.unwrap();
    wait_state(&running, "w1", State::Ready).await;
    let c = client();
    for len in [4 << 20, 1 << 20, 300_000] {
        let body = Bytes::from(vec![b'x'; len]);
        let a = send(
            &c,
            running.proxy_addrs()[0],
            "POST",
            "/v1/batch",
            Some(1),
            body,
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200, "{len} bytes: {:?}", a.body);
        let said = String::from_utf8_lossy(&a.body).into_owned();
        assert!(said.contains(&format!("\"bytes\":{len}")), "{said}");
    }
    running.shutdown().await;
}
