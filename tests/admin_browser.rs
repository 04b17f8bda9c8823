//! Browser tests of the admin status page: headless Chromium, driven over the Chrome DevTools
//! Protocol, loads `GET /` from a running syncgate in a 1280 px wide window, runs the page's
//! script against the real admin API, and the tests look at what a person would see: the
//! rendered rows, the alarm's pixels in a screenshot, a click on a drain button.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; another binary can be named with the
//! `CHROMIUM` environment variable). Without it the tests fail when `CI` is set and are skipped
//! with a note otherwise, so that `cargo test` works on a bare dev machine. Each test saves a
//! screenshot of the whole page in the Cargo target's tmp directory (named in its output).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use syncgate::demo::{SimOptions, SimWorker};
use syncgate::Config;
use syncgate::Running;
use syncgate::State;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "browser-t0ken";
/// How long any awaited condition may take.
const WAIT: Duration = Duration::from_secs(10);

/// The browser binary (`$CHROMIUM`, else `/usr/bin/chromium`); `None` (after a note) when it
/// is not installed and the test may be skipped.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "Chromium is required in CI for the status page tests, and {} does not exist: \
         install the Debian package `chromium` or set CHROMIUM to the browser binary",
        path.display()
    );
    eprintln!(
        "note: skipping a status page browser test: {} is not installed \
         (apt-get install chromium, or set CHROMIUM)",
        path.display()
    );
    None
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page, driven over the DevTools protocol. The browser is
/// killed when this is dropped.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: Ws,
    next_id: u64,
    /// Uncaught exceptions the page threw (`Runtime.exceptionThrown`).
    exceptions: Vec<String>,
}

/// A rectangle in CSS pixels of the page.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

impl Browser {
    /// Starts Chromium with a fresh profile and attaches to its page, 1280 × 900 CSS pixels.
    async fn launch(binary: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = tokio::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            // Chromium's runtime files (its singleton socket) go with the profile.
            .env("TMPDIR", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        // Chromium writes the port it bound (0 asks for any) to this file once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let port = wait_for("Chromium's DevTools port", || {
            let text = std::fs::read_to_string(&port_file).ok()?;
            text.lines().next()?.trim().parse::<u16>().ok()
        })
        .await;
        let targets = http_get_json(&format!("http://127.0.0.1:{port}/json/list")).await;
        let page = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(page.as_str())
            .await
            .expect("DevTools websocket");
        let mut browser = Browser {
            _child: child,
            _profile: profile,
            ws,
            next_id: 0,
            exceptions: Vec::new(),
        };
        browser.call("Runtime.enable", json!({})).await;
        browser.call("Page.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Sends one DevTools command and returns its result; events that arrive meanwhile are
    /// looked at for page exceptions.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::text(msg))
            .await
            .expect("send to DevTools");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {WAIT:?}"))
                .expect("DevTools connection open")
                .expect("DevTools message");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["method"] == "Runtime.exceptionThrown" {
                self.exceptions
                    .push(v["params"]["exceptionDetails"].to_string());
            }
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Polls `expr` until it is `true`.
    async fn wait_until(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + WAIT;
        while self.eval(expr).await != Value::Bool(true) {
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "timed out after {WAIT:?} waiting for {what} ({expr}); the page shows:\n{text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The rectangle of the first element matching `selector`, scrolled into view.
    async fn rect(&mut self, selector: &str) -> Rect {
        let expr = format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return {{x: r.left + window.scrollX, y: r.top + window.scrollY, \
             vx: r.left, vy: r.top, width: r.width, height: r.height}}; }})()",
            sel = json!(selector)
        );
        let r = self.eval(&expr).await;
        assert!(!r.is_null(), "no element matches {selector}");
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        Rect {
            x: f("x"),
            y: f("y"),
            width: f("width"),
            height: f("height"),
        }
    }

    /// Clicks the middle of the first element matching `selector` with the mouse, as a person
    /// does: the element must be visible and on top there.
    async fn click(&mut self, selector: &str) {
        self.rect(selector).await;
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); const r = e.getBoundingClientRect(); \
                 const x = r.left + r.width / 2, y = r.top + r.height / 2; \
                 const top = document.elementFromPoint(x, y); \
                 return {{x, y, onTop: top === e || e.contains(top)}}; }})()",
                sel = json!(selector)
            ))
            .await;
        assert_eq!(at["onTop"], true, "{selector} is covered at its middle");
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": at["x"], "y": at["y"], "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Types `text` into the element matching `selector` (focused first).
    async fn type_into(&mut self, selector: &str, text: &str) {
        self.click(selector).await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// A PNG screenshot of `clip`, or of the whole page.
    async fn screenshot(&mut self, clip: Option<Rect>) -> Vec<u8> {
        let mut params = json!({"format": "png", "captureBeyondViewport": clip.is_none()});
        if let Some(r) = clip {
            params["clip"] =
                json!({"x": r.x, "y": r.y, "width": r.width, "height": r.height, "scale": 1});
        }
        let r = self.call("Page.captureScreenshot", params).await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot")
    }

    /// Saves a screenshot of the whole page as `name` in the target's tmp dir.
    async fn save_screenshot(&mut self, name: &str) {
        let png = self.screenshot(None).await;
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// The page threw no uncaught exception.
    fn assert_no_exceptions(&self) {
        assert!(
            self.exceptions.is_empty(),
            "the page threw: {:?}",
            self.exceptions
        );
    }
}

/// RGB pixels of a PNG.
fn pixels(png_bytes: &[u8]) -> Vec<[u8; 3]> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// Share of `px` that are the alarm red (`#cf222e`, give or take antialiasing).
fn red_share(px: &[[u8; 3]]) -> f64 {
    let red = px
        .iter()
        .filter(|[r, g, b]| *r >= 170 && *g <= 90 && *b <= 90)
        .count();
    red as f64 / px.len().max(1) as f64
}

/// Share of `px` that are the "ready/complete" green (`#1a7f37`).
fn green_share(px: &[[u8; 3]]) -> f64 {
    let green = px
        .iter()
        .filter(|[r, g, b]| *g >= 100 && *r <= 70 && *b <= 90)
        .count();
    green as f64 / px.len().max(1) as f64
}

/// Polls `probe` every 20 ms until it gives a value; panics after [`WAIT`].
async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_get_json(url: &str) -> Value {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = client
        .get(url.parse().expect("URL"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Config text: `pools` (name, backends), each routed by `Host: {pool}.test` when there are
/// several, fast probes, and `admin_extra` lines in `[admin]`.
fn config_text(pools: &[(&str, &[(&str, SocketAddr)])], admin_extra: &str) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworker_threads = 1\n\n\
         [server.access_log]\nenabled = false\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n"
    );
    for (pool, backends) in pools {
        s.push_str(&format!(
            "\n[pools.{pool}]\nslow_start = \"0s\"\n\n[pools.{pool}.probe]\n\
             interval = \"100ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 1\n"
        ));
        for (name, addr) in *backends {
            s.push_str(&format!(
                "\n[[pools.{pool}.backends]]\nname = \"{name}\"\naddr = \"{addr}\"\n"
            ));
        }
        if pools.len() > 1 {
            s.push_str(&format!(
                "\n[[routes]]\nhost = \"{pool}.test\"\npool = \"{pool}\"\n"
            ));
        }
    }
    s
}

async fn start(text: &str) -> Running {
    let cfg = Config::parse(text, None).expect("valid config");
    syncgate::start(cfg).await.expect("syncgate starts")
}

fn backend(running: &Running, pool: &str, name: &str) -> Arc<syncgate::Backend> {
    running
        .shared()
        .snapshot()
        .backends()
        .find(|b| &*b.pool == pool && &*b.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no backend {pool}/{name}"))
}

async fn wait_state(running: &Running, pool: &str, name: &str, state: State) {
    wait_for(&format!("{pool}/{name} {state}"), || {
        (backend(running, pool, name).state() == state).then_some(())
    })
    .await;
}

/// Sends push requests with valid keys to `proxy` until `stop` (or 30 s at most).
async fn load(proxy: SocketAddr, stop: Arc<AtomicBool>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let until = Instant::now() + Duration::from_secs(30);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        n += 1;
        let req = http::Request::post(format!("http://{proxy}/v1/batch"))
            .header("authorization", format!("Bearer key-{}", n % 100))
            .body(Empty::new())
            .expect("request");
        if let Ok(resp) = client.request(req).await {
            let _ = resp.into_body().collect().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn worker(synced: bool) -> SimWorker {
    SimWorker::start(SimOptions {
        synced,
        ..SimOptions::default()
    })
    .await
    .expect("worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_every_backend_with_its_state() {
    let Some(binary) = chromium() else { return };
    let (w1, w2, w3) = (worker(true).await, worker(true).await, worker(false).await);
    let backends = [("w1", w1.addr()), ("w2", w2.addr()), ("w3", w3.addr())];
    let running = start(&config_text(&[("push", &backends)], "")).await;
    wait_state(&running, "push", "w1", State::Ready).await;
    wait_state(&running, "push", "w2", State::Ready).await;
    wait_for("w3 probed", || {
        backend(&running, "push", "w3")
            .info()
            .last_probe_ok
            .map(|_| ())
    })
    .await;

    // Client load through the proxy while the page watches, for its rates and latencies.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(running.proxy_addrs()[0], stop.clone()));

    let mut page = Browser::launch(&binary).await;
    page.navigate(&format!("http://{}/", running.admin_addr()))
        .await;
    page.wait_until(
        "three backend rows",
        "document.querySelectorAll('tr[data-backend]').length === 3",
    )
    .await;
    // Per pool: request rate, latency quantiles and the status split over the last seconds;
    // per backend: its request rate.
    let stat =
        |key: &str| format!("document.querySelector('[data-stat=\"{key}\"] .value').textContent");
    let requests = stat("requests");
    page.wait_until(
        "a request rate",
        &format!("/^[0-9.]+\\/s$/.test({requests}) && {requests} !== '0.00/s'"),
    )
    .await;
    page.wait_until(
        "latency quantiles",
        &format!("/ms \\/ .*s$/.test({})", stat("latency")),
    )
    .await;
    page.wait_until(
        "the status split",
        &format!("{}.startsWith('100%')", stat("classes")),
    )
    .await;
    for name in ["w1", "w2"] {
        let rate = format!(
            "document.querySelector('tr[data-backend=\"push/{name}\"] [data-rate]').textContent"
        );
        page.wait_until(
            &format!("{name}'s rate"),
            &format!("/^[1-9][0-9.]*\\/s/.test({rate})"),
        )
        .await;
    }
    page.save_screenshot("status-page-traffic.png").await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    for (backend, state) in [
        ("push/w1", "ready"),
        ("push/w2", "ready"),
        ("push/w3", "pending"),
    ] {
        let shown = page
            .eval(&format!(
                "document.querySelector('tr[data-backend=\"{backend}\"]').dataset.state"
            ))
            .await;
        assert_eq!(shown, state, "{backend}");
    }
    page.wait_until(
        "event rows",
        "document.querySelectorAll('tr[data-seq]').length >= 2",
    )
    .await;
    // One time format: every time shown is relative, with its RFC 3339 form in the title.
    let times = page
        .eval("[...document.querySelectorAll('[data-time]')].map(e => [e.textContent, e.title])")
        .await;
    let times = times.as_array().expect("times");
    assert!(!times.is_empty());
    for t in times {
        let (text, title) = (t[0].as_str().unwrap_or(""), t[1].as_str().unwrap_or(""));
        assert!(text.ends_with(" ago"), "{text:?}");
        humantime::parse_rfc3339(title).unwrap_or_else(|e| panic!("{title:?}: {e}"));
    }
    page.assert_no_exceptions();

    running.shutdown().await;
    for w in [w1, w2, w3] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_alarms_in_red_for_a_pool_without_a_ready_backend_and_for_one_failing_closed() {
    let Some(binary) = chromium() else { return };
    let (p1, p2) = (worker(true).await, worker(true).await);
    let q1 = worker(false).await;
    let (k1, k2) = (worker(true).await, worker(true).await);
    let text = config_text(
        &[
            ("push", &[("p1", p1.addr()), ("p2", p2.addr())]),
            ("pull", &[("q1", q1.addr())]),
            ("keys", &[("k1", k1.addr()), ("k2", k2.addr())]),
        ],
        "",
    );
    let running = start(&text).await;
    for (pool, name) in [
        ("push", "p1"),
        ("push", "p2"),
        ("keys", "k1"),
        ("keys", "k2"),
    ] {
        wait_state(&running, pool, name, State::Ready).await;
    }
    // Pool `keys` loses every key at once while its workers still claim a complete sync at
    // the same generation: a fleet-wide key loss, and the pool fails closed.
    k1.truncate_keys(0);
    k2.truncate_keys(0);
    let backends_url = format!("http://{}/api/backends", running.admin_addr());
    let deadline = Instant::now() + WAIT;
    while http_get_json(&backends_url).await["pools"]["keys"]["fail_closed"].is_null() {
        assert!(Instant::now() < deadline, "pool keys did not fail closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut page = Browser::launch(&binary).await;
    page.navigate(&format!("http://{}/", running.admin_addr()))
        .await;
    page.wait_until(
        "the no-ready alarm of pool pull",
        "!!document.querySelector('section[data-pool=\"pull\"] [data-alarm=\"no-ready-backend\"]')",
    )
    .await;
    page.wait_until(
        "the fail-closed alarm of pool keys",
        "!!document.querySelector('section[data-pool=\"keys\"] [data-fail-closed]')",
    )
    .await;
    page.save_screenshot("status-page-alarms.png").await;

    // What a person sees: the alarms are red blocks, in the pool and at the top of the page.
    for selector in [
        "section[data-pool=\"pull\"] [data-alarm=\"no-ready-backend\"]",
        "section[data-pool=\"keys\"] [data-fail-closed]",
        "#alarms",
    ] {
        let rect = page.rect(selector).await;
        assert!(
            rect.width > 300.0 && rect.height > 20.0,
            "{selector}: {rect:?}"
        );
        let shot = page.screenshot(Some(rect)).await;
        let share = red_share(&pixels(&shot));
        assert!(share > 0.6, "{selector} is {:.0}% alarm red", share * 100.0);
    }
    let fail_closed = page
        .eval(
            "document.querySelector('section[data-pool=\"keys\"] [data-fail-closed]').textContent",
        )
        .await;
    assert!(
        fail_closed
            .as_str()
            .is_some_and(|t| t.contains("fleet-wide key loss suspected")),
        "{fail_closed}"
    );
    let top = page
        .eval("[...document.querySelectorAll('#alarms li')].map(li => li.dataset.pool + ':' + li.dataset.alarm)")
        .await;
    for alarm in [
        "pull:no-ready-backend",
        "keys:fail-closed",
        "keys:no-ready-backend",
    ] {
        assert!(
            top.as_array().is_some_and(|a| a.iter().any(|x| x == alarm)),
            "{alarm} in {top}"
        );
    }
    // A healthy pool raises none, and its count is not painted as an alarm.
    assert_eq!(
        page.eval("document.querySelectorAll('section[data-pool=\"push\"] [data-alarm]').length")
            .await,
        0
    );
    let count = page.rect("section[data-pool=\"push\"] h2 .count").await;
    let shot = page.screenshot(Some(count)).await;
    assert!(
        red_share(&pixels(&shot)) < 0.05,
        "push's ready count is red"
    );

    // No sideways scrolling at 1280 px: neither the page nor any section or table overflows.
    let overflow = page
        .eval(
            "(() => { const wide = []; const d = document.documentElement; \
             if (d.scrollWidth > d.clientWidth) wide.push('page ' + d.scrollWidth); \
             for (const e of document.querySelectorAll('section, table, .stats')) \
               if (e.scrollWidth > e.clientWidth + 1) wide.push(e.tagName + ' ' + e.scrollWidth + ' > ' + e.clientWidth); \
             return {width: window.innerWidth, wide}; })()",
        )
        .await;
    assert_eq!(overflow["width"], 1280);
    assert_eq!(overflow["wide"], json!([]), "{overflow}");
    page.assert_no_exceptions();

    running.shutdown().await;
    for w in [p1, p2, q1, k1, k2] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_marks_a_key_report_stale_when_the_worker_stops_answering_probes() {
    let Some(binary) = chromium() else { return };
    let (w1, w2) = (worker(true).await, worker(true).await);
    let running = start(&config_text(
        &[("push", &[("w1", w1.addr()), ("w2", w2.addr())])],
        "",
    ))
    .await;
    wait_state(&running, "push", "w1", State::Ready).await;
    wait_state(&running, "push", "w2", State::Ready).await;
    // w2 stops: its probes are refused, and its last (complete) report gets old.
    w2.stop().await;
    wait_for("w2's probe refused", || {
        let b = backend(&running, "push", "w2");
        let info = b.info();
        (info.last_probe_ok == Some(false) && info.reason.contains("refused")).then_some(())
    })
    .await;

    let mut page = Browser::launch(&binary).await;
    page.navigate(&format!("http://{}/", running.admin_addr()))
        .await;
    page.wait_until(
        "w2 shown stale",
        "document.querySelector('tr[data-backend=\"push/w2\"]')?.dataset.keySync === 'stale'",
    )
    .await;
    page.save_screenshot("status-page-stale.png").await;
    let cell = |name: &str| {
        format!("document.querySelector('tr[data-backend=\"push/{name}\"] [data-key-sync-tag]').textContent")
    };
    assert_eq!(page.eval(&cell("w2")).await, "stale");
    assert_eq!(page.eval(&cell("w1")).await, "complete");
    // Its bar is not the green of a complete sync; the live worker's is.
    let bar = |name: &str| format!("tr[data-backend=\"push/{name}\"] .bar");
    let stale = page.rect(&bar("w2")).await;
    let live = page.rect(&bar("w1")).await;
    let stale_px = pixels(&page.screenshot(Some(stale)).await);
    let live_px = pixels(&page.screenshot(Some(live)).await);
    assert!(green_share(&live_px) > 0.8, "w1's bar is not green");
    assert!(green_share(&stale_px) < 0.05, "w2's stale bar is green");
    page.assert_no_exceptions();

    running.shutdown().await;
    w1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_button_drains_the_backend_with_the_admin_token_kept_in_the_tab() {
    let Some(binary) = chromium() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let token_path = dir.path().join("admin.token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).expect("write token");
    let token_line = format!("token_file = {:?}", token_path.display().to_string());
    let (w1, w2) = (worker(true).await, worker(true).await);
    let running = start(&config_text(
        &[("push", &[("w1", w1.addr()), ("w2", w2.addr())])],
        &token_line,
    ))
    .await;
    wait_state(&running, "push", "w1", State::Ready).await;
    wait_state(&running, "push", "w2", State::Ready).await;

    let mut page = Browser::launch(&binary).await;
    page.navigate(&format!("http://{}/", running.admin_addr()))
        .await;
    let drain = "button[data-action=\"drain\"][data-backend=\"push/w1\"]";
    page.wait_until(
        "w1's drain button",
        &format!("!!document.querySelector('{drain}')"),
    )
    .await;
    page.wait_until(
        "the token field (a token is configured)",
        "!document.getElementById('token-form').classList.contains('hidden')",
    )
    .await;

    // Without the token the click is refused, and the page says where to enter it.
    page.click(drain).await;
    page.wait_until(
        "a notice about the token",
        "document.getElementById('notice').textContent.includes('admin token')",
    )
    .await;
    assert_eq!(backend(&running, "push", "w1").state(), State::Ready);

    // With the token entered, the same click drains w1.
    page.type_into("#admin-token", TOKEN).await;
    page.click("#token-form button[type=submit]").await;
    assert_eq!(
        page.eval("sessionStorage.getItem('syncgate-admin-token')")
            .await,
        TOKEN,
        "kept for this tab"
    );
    page.click(drain).await;
    wait_for("w1 drained", || {
        matches!(
            backend(&running, "push", "w1").state(),
            State::Draining | State::Disabled
        )
        .then_some(())
    })
    .await;
    assert_eq!(
        backend(&running, "push", "w1")
            .info()
            .reason
            .split(',')
            .next(),
        Some("drained by operator")
    );
    page.wait_until(
        "w1 shown disabled with an enable button",
        "document.querySelector('tr[data-backend=\"push/w1\"]').dataset.state === 'disabled' && \
         !!document.querySelector('button[data-action=\"enable\"][data-backend=\"push/w1\"]')",
    )
    .await;
    assert_eq!(backend(&running, "push", "w2").state(), State::Ready);
    page.save_screenshot("status-page-drained.png").await;

    // Enable brings it back through its probes.
    page.click("button[data-action=\"enable\"][data-backend=\"push/w1\"]")
        .await;
    wait_state(&running, "push", "w1", State::Ready).await;
    page.assert_no_exceptions();

    running.shutdown().await;
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_keeps_showing_the_pools_when_part_of_the_admin_api_fails() {
    let Some(binary) = chromium() else { return };
    let w1 = worker(true).await;
    let running = start(&config_text(&[("push", &[("w1", w1.addr())])], "")).await;
    wait_state(&running, "push", "w1", State::Ready).await;

    let mut page = Browser::launch(&binary).await;
    // The config and event endpoints fail (as an unreachable or erroring API would).
    page.call("Network.enable", json!({})).await;
    page.call(
        "Network.setBlockedURLs",
        json!({"urls": ["*/api/config*", "*/api/events*"]}),
    )
    .await;
    page.navigate(&format!("http://{}/", running.admin_addr()))
        .await;
    page.wait_until(
        "w1 shown ready",
        "document.querySelector('tr[data-backend=\"push/w1\"]')?.dataset.state === 'ready'",
    )
    .await;
    page.wait_until(
        "the error banner naming what failed",
        "(() => { const e = document.querySelector('[data-api-error]'); \
         return !e.classList.contains('hidden') && e.textContent.includes('/api/config'); })()",
    )
    .await;
    page.save_screenshot("status-page-api-errors.png").await;

    // The API comes back: the banner goes, the events appear.
    page.call("Network.setBlockedURLs", json!({"urls": []}))
        .await;
    page.wait_until(
        "the banner gone and events shown",
        "document.querySelector('[data-api-error]').classList.contains('hidden') && \
         document.querySelectorAll('tr[data-seq]').length > 0",
    )
    .await;
    page.assert_no_exceptions();

    running.shutdown().await;
    w1.stop().await;
}

/// `POST /api/reload` on the admin listener at `admin`: its status.
async fn post_reload(admin: SocketAddr) -> http::StatusCode {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let reload = http::Request::post(format!("http://{admin}/api/reload"))
        .body(Empty::new())
        .expect("request");
    client
        .request(reload)
        .await
        .expect("reload answered")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_a_failed_reload_with_its_errors_and_the_running_generation() {
    let Some(binary) = chromium() else { return };
    let w1 = worker(true).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("syncgate.toml");
    let good = config_text(&[("push", &[("w1", w1.addr())])], "");
    std::fs::write(&path, &good).expect("write config");
    let running = syncgate::start(Config::load(&path).expect("valid config"))
        .await
        .expect("syncgate starts");
    wait_state(&running, "push", "w1", State::Ready).await;

    let mut page = Browser::launch(&binary).await;
    page.navigate(&format!("http://{}/", running.admin_addr()))
        .await;
    page.wait_until(
        "w1 shown",
        "!!document.querySelector('tr[data-backend=\"push/w1\"]')",
    )
    .await;
    assert_eq!(
        page.eval("!!document.querySelector('[data-reload-error]')")
            .await,
        false
    );

    // A broken file: the reload fails, the running config stays, and the page says so.
    std::fs::write(&path, good.replace("rise = 1", "rise = 0")).expect("write config");
    assert_eq!(
        post_reload(running.admin_addr()).await,
        http::StatusCode::BAD_REQUEST
    );
    page.wait_until(
        "the reload error",
        "!!document.querySelector('[data-reload-error]:not(.hidden)')",
    )
    .await;
    let text = page
        .eval("document.querySelector('[data-reload-error]').textContent")
        .await;
    let text = text.as_str().unwrap_or("");
    assert!(text.contains("generation 1"), "{text}");
    assert!(
        text.contains(&format!("{}:", path.display())) && text.contains("rise"),
        "{text}"
    );
    page.save_screenshot("status-page-reload-error.png").await;

    // A file that moves the listener: it applies but for the listener, and the page names
    // what waits for a restart.
    std::fs::write(
        &path,
        good.replace("listen = [\"127.0.0.1:0\"]", "listen = [\"127.0.0.1:1\"]"),
    )
    .expect("write config");
    assert_eq!(
        post_reload(running.admin_addr()).await,
        http::StatusCode::OK
    );
    page.wait_until(
        "the restart note",
        "!!document.querySelector('[data-restart-required]')",
    )
    .await;
    let text = page
        .eval("document.querySelector('[data-restart-required]').textContent")
        .await;
    assert!(
        text.as_str().unwrap_or("").contains("server.listen"),
        "{text}"
    );
    page.assert_no_exceptions();

    running.shutdown().await;
    w1.stop().await;
}
