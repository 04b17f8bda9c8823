//! The access log (issue 14): one line per request once its response has been sent or its
//! client went away, in text or JSON, to a file that SIGUSR1 reopens, never with a
//! credential in it; real sockets, syncgate in-process (and `syncgate run` for the signal).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use syncgate::demo::SimWorker;
use syncgate::{Running, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const SECS5: Duration = Duration::from_secs(5);

/// `pool_config` with the access log written to `path` in `format` (and `extra` keys).
fn logging_to(cfg: &str, path: &Path, format: &str, extra: &str) -> String {
    cfg.replace(
        ACCESS_LOG_OFF,
        &format!(
            "[server.access_log]\npath = \"{}\"\nformat = \"{format}\"\n{extra}\n",
            path.display()
        ),
    )
}

/// The lines of the file at `path` (none while it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits for the line that names request `id` (text `request_id=id`, or JSON
/// `"request_id":"id"`) in the file at `path`.
async fn line_of(path: &Path, id: &str) -> String {
    let text_key = format!(" request_id={id}");
    let json_key = format!("\"request_id\":\"{id}\"");
    let found = || {
        lines(path)
            .into_iter()
            .find(|l| l.contains(&text_key) || l.contains(&json_key))
    };
    wait_until(SECS5, &format!("the line of {id}"), || async {
        found().is_some()
    })
    .await;
    found().expect("found")
}

/// Sends `head` (and `body`) on a connection of its own and reads the answer to its end
/// (`connection: close`); returns the connection's local address and the answer.
async fn exchange(proxy: SocketAddr, head: &str, body: &[u8]) -> (SocketAddr, String) {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let local = s.local_addr().expect("local address");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut answer = Vec::new();
    tokio::time::timeout(SECS5, s.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    (local, String::from_utf8_lossy(&answer).into_owned())
}

/// The body of an HTTP/1.1 answer read whole.
fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// A push with a credential in the query string and in `Authorization`.
fn push_head(id: &str, body_len: usize) -> String {
    format!(
        "POST /v1/batch?api_key=SECRET-QUERY-KEY&x=1 HTTP/1.1\r\nhost: push.example.com\r\n\
         authorization: Bearer key-7\r\ncookie: session=SECRET-COOKIE\r\nx-request-id: {id}\r\n\
         content-length: {body_len}\r\nconnection: close\r\n\r\n"
    )
}

/// One worker and syncgate logging text to a file in the returned directory.
async fn one_worker() -> (Vec<SimWorker>, tempfile::TempDir, PathBuf, Running) {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    let running = started(&logging_to(&cfg, &log, "text", ""), &["w1"]).await;
    (ws, dir, log, running)
}

/// Two workers behind round robin, w1 having lost its keys (its probe still claims them), and
/// syncgate logging in `format` to a file in the returned directory.
async fn w1_without_keys(format: &str) -> (Vec<SimWorker>, tempfile::TempDir, PathBuf, Running) {
    let ws = workers(2).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let names = named(&ws);
    let cfg = pool_config(&refs(&names), "balance = \"round_robin\"", "");
    let running = started(&logging_to(&cfg, &log, format, ""), &["w1", "w2"]).await;
    ws[0].forget_keys();
    (ws, dir, log, running)
}

async fn started(cfg: &str, names: &[&str]) -> Running {
    let running = start(cfg).await;
    for n in names {
        wait_state(&running, n, State::Ready).await;
    }
    running
}

fn assert_no_credentials(line: &str) {
    for secret in ["SECRET", "key-7", "Bearer", "api_key", "session", "?"] {
        assert!(!line.contains(secret), "{secret:?} in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_line_names_the_request_its_answer_and_the_backend_without_credentials() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "").replace(
        "[pools.push.probe]",
        "[pools.push.guard]\nmax_replay_body = \"1KiB\"\n\n[pools.push.probe]",
    );
    let running = started(&logging_to(&cfg, &log, "text", ""), &["w1"]).await;
    let proxy = running.proxy_addrs()[0];

    let (local, answer) = exchange(proxy, &push_head("t-1", 5), b"hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let line = line_of(&log, "t-1").await;
    // `2026-01-02T03:04:05.678Z 127.0.0.1:PORT "POST /v1/batch HTTP/1.1" 200 5 N D ...`
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[0].len(), 24, "{line}");
    assert!(
        fields[0].ends_with('Z') && fields[0].as_bytes()[19] == b'.',
        "{line}"
    );
    assert_eq!(fields[1], local.to_string(), "{line}");
    assert_eq!(
        &fields[2..5],
        ["\"POST", "/v1/batch", "HTTP/1.1\""],
        "{line}"
    );
    assert_eq!(fields[5], "200", "{line}");
    assert_eq!(fields[6], "5", "request body bytes: {line}");
    assert_eq!(fields[7], body_of(&answer).len().to_string(), "{line}");
    let total: f64 = fields[8].parse().expect("duration in ms");
    let upstream: f64 = fields
        .iter()
        .find_map(|f| f.strip_prefix("upstream_ms="))
        .expect("upstream_ms")
        .parse()
        .expect("ms");
    assert!(upstream > 0.0 && upstream <= total, "{line}");
    assert!(line.contains(" request_id=t-1 "), "{line}");
    assert!(line.contains(" pool=push backend=w1"), "{line}");
    assert!(
        !line.contains("guard=") && !line.contains("retries=") && !line.contains("aborted"),
        "{line}"
    );
    assert_no_credentials(&line);

    // A body too large to keep for a replay streams upstream: its bytes are counted as they go.
    let big = vec![b'x'; 4000];
    let (_, answer) = exchange(proxy, &push_head("t-2", big.len()), &big).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let line = line_of(&log, "t-2").await;
    assert!(line.contains("\" 200 4000 "), "{line}");

    // A request without an id is logged under the one syncgate generated and sent back.
    let (_, answer) = exchange(
        proxy,
        "GET /v1/batch HTTP/1.1\r\nhost: a\r\nauthorization: Bearer key-1\r\nconnection: close\r\n\r\n",
        b"",
    )
    .await;
    let id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a generated id")
        .to_owned();
    let line = line_of(&log, &id).await;
    assert!(line.contains("\"GET /v1/batch HTTP/1.1\" 200 0 "), "{line}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_line_is_one_flat_object_and_names_the_guards_outcome_and_the_replay() {
    // Of two requests, exactly one goes first to w1; w2 contradicts its 401.
    let (_ws, _dir, log, running) = w1_without_keys("json").await;
    let proxy = running.proxy_addrs()[0];
    for id in ["j-1", "j-2"] {
        let (_, answer) = exchange(proxy, &push_head(id, 2), b"{}").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let parsed = |line: String| -> serde_json::Value {
        assert_no_credentials(&line);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let lines = [
        parsed(line_of(&log, "j-1").await),
        parsed(line_of(&log, "j-2").await),
    ];
    for v in &lines {
        let obj = v.as_object().expect("an object");
        for key in [
            "time",
            "client",
            "method",
            "path",
            "version",
            "status",
            "bytes_in",
            "bytes_out",
            "duration_ms",
            "upstream_ms",
            "pool",
            "backend",
            "retries",
            "request_id",
            "aborted",
        ] {
            assert!(obj.contains_key(key), "{key} missing in {v}");
        }
        assert!(
            obj.values().all(|x| !x.is_object() && !x.is_array()),
            "flat: {v}"
        );
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/v1/batch");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_in"], 2);
        assert_eq!(v["pool"], "push");
        assert_eq!(v["aborted"], false);
        assert!(v["duration_ms"].as_f64().expect("ms") >= v["upstream_ms"].as_f64().expect("ms"));
    }
    let contradicted: Vec<_> = lines.iter().filter(|v| v.get("guard").is_some()).collect();
    assert_eq!(contradicted.len(), 1, "{lines:?}");
    let v = contradicted[0];
    assert_eq!(v["guard"], "contradicted");
    assert_eq!(v["retries"], 1, "the replay on w2");
    assert_eq!(v["backend"], "w2", "the answer the client got");
    let plain: Vec<_> = lines.iter().filter(|v| v.get("guard").is_none()).collect();
    assert_eq!(plain[0]["retries"], 0);
    assert_eq!(plain[0]["backend"], "w2");

    // HTTP/2 (prior knowledge) is logged as such.
    let c = h2_client();
    let req = http::Request::get(format!("http://{proxy}/v1/batch"))
        .header("authorization", "Bearer key-3")
        .header("x-request-id", "j-h2")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(c.request(req).await.expect("h2").status(), 200);
    let v = parsed(line_of(&log, "j-h2").await);
    assert_eq!(v["version"], "HTTP/2.0");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncgates_own_404_and_503_are_logged_without_a_backend() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // A second pool whose only backend listens nowhere: never ready, so 503.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    cfg.push_str(&format!(
        "\n[pools.down]\nslow_start = \"0s\"\n[[pools.down.backends]]\nname = \"d1\"\naddr = \"{dead}\"\n\
         \n[[routes]]\npath_prefix = \"/v1\"\npool = \"push\"\n\
         \n[[routes]]\npath_prefix = \"/down\"\npool = \"down\"\n"
    ));
    let running = started(&logging_to(&cfg, &log, "text", ""), &["w1"]).await;
    let proxy = running.proxy_addrs()[0];
    let get = |path: &str, id: &str| {
        format!("GET {path} HTTP/1.1\r\nhost: a\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n")
    };
    let (_, answer) = exchange(proxy, &get("/nowhere?token=SECRET", "l-404"), b"").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let (_, answer) = exchange(proxy, &get("/down/x", "l-503"), b"").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    for (id, request, status) in [
        ("l-404", "\"GET /nowhere HTTP/1.1\"", "404"),
        ("l-503", "\"GET /down/x HTTP/1.1\"", "503"),
    ] {
        let line = line_of(&log, id).await;
        assert!(line.contains(&format!("{request} {status} 0 ")), "{line}");
        for absent in ["upstream_ms=", "pool=", "backend=", "guard=", "aborted"] {
            assert!(!line.contains(absent), "{absent} in {line}");
        }
        assert_no_credentials(&line);
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_in_place_of_an_unconfirmed_answer_names_the_guard_and_no_backend() {
    // A request sent to w1 first gets its 401, replayed on w2, whose 500 is no opinion: the
    // 401 stays unconfirmed, and the client gets syncgate's 503.
    let (ws, _dir, log, running) = w1_without_keys("text").await;
    ws[1].set_status_override(Some(500));
    let proxy = running.proxy_addrs()[0];
    let mut replaced = None;
    for id in ["u-1", "u-2", "u-3", "u-4"] {
        let (_, answer) = exchange(proxy, &push_head(id, 2), b"{}").await;
        if answer.starts_with("HTTP/1.1 503") {
            replaced = Some(id);
            break;
        }
    }
    let id = replaced.expect("a request went to w1 first and got syncgate's 503");
    let line = line_of(&log, id).await;
    assert!(line.contains("\" 503 "), "{line}");
    assert!(line.contains(" guard=unconfirmed"), "{line}");
    assert!(line.contains(" retries=1"), "{line}");
    for absent in ["upstream_ms=", "pool=", "backend="] {
        assert!(!line.contains(absent), "{absent} in {line}");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_its_answer_is_logged_as_aborted() {
    let (ws, _dir, log, running) = one_worker().await;
    ws[0].set_delay(Duration::from_millis(1800));
    let mut leaving = TcpStream::connect(running.proxy_addrs()[0]).await.unwrap();
    leaving
        .write_all(
            push_head("a-1", 2)
                .replace("connection: close\r\n", "")
                .as_bytes(),
        )
        .await
        .unwrap();
    leaving.write_all(b"{}").await.unwrap();
    wait_until(SECS5, "the request reached the worker", || async {
        ws[0].requests() > 0
    })
    .await;
    drop(leaving);
    let line = line_of(&log, "a-1").await;
    // No answer had begun: nginx's 499.
    assert!(
        line.contains("\"POST /v1/batch HTTP/1.1\" 499 2 0 "),
        "{line}"
    );
    assert!(line.ends_with(" aborted=true"), "{line}");
    assert!(!line.contains("backend="), "{line}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_after_logrotate_renamed_the_file_writes_to_a_new_one() {
    let (_ws, dir, log, running) = one_worker().await;
    let proxy = running.proxy_addrs()[0];
    exchange(proxy, &push_head("r-1", 0), b"").await;
    line_of(&log, "r-1").await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // What the SIGUSR1 handler calls.
    running.reopen_access_log();
    wait_until(SECS5, "a new file", || async { log.exists() }).await;
    exchange(proxy, &push_head("r-2", 0), b"").await;
    line_of(&log, "r-2").await;
    assert_eq!(lines(&rotated).len(), 1, "{:?}", lines(&rotated));
    assert_eq!(lines(&log).len(), 1, "{:?}", lines(&log));
    running.shutdown().await;
}

/// Whether this process holds a file descriptor open on `path`.
fn holds_open(path: &Path) -> bool {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| target == path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_log_off_nothing_is_written() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    let running = started(&logging_to(&cfg, &log, "text", "enabled = false"), &["w1"]).await;
    let proxy = running.proxy_addrs()[0];
    for i in 0..20 {
        let (_, answer) = exchange(proxy, &push_head(&format!("o-{i}"), 0), b"").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    running.reopen_access_log();
    // Shutdown writes whatever the threads held: there was nothing, not even a file.
    running.shutdown().await;
    assert!(!log.exists(), "{:?}", lines(&log));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_the_log_on_moves_it_and_closes_the_old_file() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let first: PathBuf = dir.path().join("first.log");
    let second: PathBuf = dir.path().join("second.log");
    let path = dir.path().join("syncgate.toml");
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "");
    let write = |text: String| std::fs::write(&path, text).unwrap();
    write(logging_to(&cfg, &first, "text", "enabled = false"));
    let running = syncgate::start(syncgate::Config::load(&path).unwrap())
        .await
        .unwrap();
    wait_state(&running, "w1", State::Ready).await;
    let proxy = running.proxy_addrs()[0];
    exchange(proxy, &push_head("off-1", 0), b"").await;

    write(logging_to(&cfg, &first, "text", "enabled = true"));
    running.control().reload("api").await.unwrap();
    exchange(proxy, &push_head("on-1", 0), b"").await;
    assert!(line_of(&first, "on-1")
        .await
        .contains("\"POST /v1/batch HTTP/1.1\" 200"));

    write(logging_to(&cfg, &second, "json", ""));
    running.control().reload("api").await.unwrap();
    exchange(proxy, &push_head("on-2", 0), b"").await;
    let line = line_of(&second, "on-2").await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON after the reload");
    assert_eq!(v["request_id"], "on-2");
    wait_until(SECS5, "the old file is closed", || async {
        !holds_open(&first)
    })
    .await;
    assert!(holds_open(&second));

    // The dropped-lines counter is exported (none dropped here).
    let metrics = admin_metrics(running.admin_addr()).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "syncgate_access_log_dropped_total 0"),
        "{metrics}"
    );
    running.shutdown().await;
    assert_eq!(
        lines(&first),
        [line_of(&first, "on-1").await],
        "only on-1, of when it was on"
    );
    assert_eq!(lines(&second).len(), 1, "{:?}", lines(&second));
}

/// `GET /metrics` from the admin listener.
async fn admin_metrics(admin: SocketAddr) -> String {
    let (_, answer) = exchange(
        admin,
        "GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
        b"",
    )
    .await;
    body_of(&answer).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_every_line_still_buffered() {
    let (_ws, _dir, log, running) = one_worker().await;
    let proxy = running.proxy_addrs()[0];
    let c = client();
    for _ in 0..50 {
        assert_eq!(get(&c, proxy, 1).await.status, 200);
    }
    running.shutdown().await;
    // No waiting: shutdown returned after the writer wrote what the threads held.
    assert_eq!(lines(&log).len(), 50, "{:?}", lines(&log));
}

const BIN: &str = env!("CARGO_BIN_EXE_syncgate");

type StderrLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Runs `syncgate run` on `config` until it logs its proxy address; returns the child, that
/// address, and the rest of its stderr.
async fn run_binary(config: &Path) -> (tokio::process::Child, SocketAddr, StderrLines) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("startup log")
            .unwrap()
            .unwrap_or_else(|| panic!("syncgate ended:\n{seen}"));
        if line.contains("proxy listening") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .expect("listen=");
            return (child, addr.parse().expect("an address"), lines);
        }
        seen.push_str(&line);
        seen.push('\n');
    }
}

fn kill(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncgate_run_reopens_its_access_log_on_sigusr1_and_logs_to_stderr_by_default() {
    let ws = workers(1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("syncgate.toml");
    // Relative to the config's directory.
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "").replace(
        ACCESS_LOG_OFF,
        "[server.access_log]\npath = \"access.log\"\n",
    );
    std::fs::write(&config, &cfg).unwrap();
    let log = dir.path().join("access.log");
    let (mut child, proxy, mut stderr) = run_binary(&config).await;
    // Keep reading syncgate's own log, so that it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let serves = |id: &'static str| async move {
        exchange(proxy, &push_head(id, 0), b"")
            .await
            .1
            .starts_with("HTTP/1.1 200")
    };
    wait_until(SECS5, "w1 serves", || serves("u-0")).await;
    line_of(&log, "u-0").await;
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    kill(&child, "-USR1");
    wait_until(SECS5, "reopened", || async { log.exists() }).await;
    assert!(serves("u-1").await);
    line_of(&log, "u-1").await;
    assert!(lines(&rotated).iter().all(|l| !l.contains("u-1")));
    kill(&child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGUSR1 did not kill it; SIGTERM ended it"
    );
    let _ = drain.await;

    // Without [server.access_log]: on, text, on stderr beside syncgate's own log.
    let cfg = pool_config(&[("w1", ws[0].addr())], "", "").replace(ACCESS_LOG_OFF, "");
    std::fs::write(&config, &cfg).unwrap();
    let (mut child, proxy, mut stderr) = run_binary(&config).await;
    wait_until(SECS5, "w1 serves", || async {
        exchange(proxy, &push_head("s-1", 0), b"")
            .await
            .1
            .starts_with("HTTP/1.1 200")
    })
    .await;
    let line = tokio::time::timeout(SECS5, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            // Attempts before w1 was ready were answered 503, and logged too.
            if line.contains("request_id=s-1") && line.contains("\" 200 ") {
                return line;
            }
        }
        panic!("stderr ended without the line");
    })
    .await
    .expect("the access log line on stderr");
    assert!(
        line.contains("\"POST /v1/batch HTTP/1.1\" 200 0 "),
        "{line}"
    );
    kill(&child, "-TERM");
    let _ = child.wait().await;
}
