//! The admin HTTP endpoint: JSON API, operator actions, Prometheus metrics and the status page.
//!
//! Served over plain HTTP/1.1 on `[admin] listen` (default `127.0.0.1:9901`); admin traffic is
//! light, so this module favours clarity over speed. The endpoints (field names are documented
//! in `docs/admin-api.md` and are a stable contract):
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /` | self-contained HTML status page, refreshing itself every second |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 while this instance serves, 503 once it is shutting down (never pool health) |
//! | `GET /api/backends` | every backend of every pool with its state, probe and counters |
//! | `GET /api/config` | generation, sha256, loaded_at, the last reload error, settings waiting for a restart |
//! | `GET /api/events[?since=N]` | the state-transition log, newest last |
//! | `POST /api/reload` | 200 `{"generation": N}` (and `restart_required` when some settings wait for one) or 400 with every error |
//! | `POST /api/backends/{pool}/{name}/drain` | operator drain: `draining`, then `disabled` when idle |
//! | `POST /api/backends/{pool}/{name}/enable` | back to `pending`: the backend must pass its probes |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text format) |
//!
//! With `[admin] token_file`, every `POST` needs `Authorization: Bearer <token>` (compared in
//! constant time); `GET`s are open. A `POST` sent by a browser from another origin is refused
//! (403) even without a token, and so is one whose `Host` names neither an IP address,
//! `localhost` nor one of `[admin] allowed_hosts` (DNS rebinding: a page whose name resolves
//! to the admin address sends its own name as `Host`, and its `Origin` matches it). Errors are JSON `{"error": "..."}`: unknown path 404, wrong
//! method 405 (with `Allow`), missing or wrong token 401, body over 64 KiB 413.
//!
//! Everything shown is read at request time from the shared state ([`crate::snapshot::Shared`])
//! and the control plane ([`Control`]); the request path is never touched: its counters are
//! plain atomics that a `prometheus-client` collector renders at scrape time, a piece at a
//! time while the answer is sent (`prometheus::Scrape`).

mod json;
mod prometheus;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::ser::Serialize;
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, State};
use crate::clock::rfc3339;
use crate::reload::Control;
use crate::snapshot::Shared;
use json::{
    backend_json, duration_ms, errors_json, fleet_json, object, pool_stats_json, BackendsBody,
    PoolBody,
};

/// Request bodies larger than this are answered `413`.
pub const MAX_BODY: usize = 64 * 1024;
/// A body declared over [`MAX_BODY`] is read and discarded up to this many bytes ...
const DISCARD_MAX: usize = 1024 * 1024;
/// ... or for this long, before the 413.
const DISCARD_TIME: Duration = Duration::from_secs(2);
/// A client must send its request headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish their exchange after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The most an admin connection buffers (hyper's default is 400 KiB): a `/metrics` answer is
/// rendered as it is sent, and hyper asks for more of it only while its write buffer is under
/// this. Also the longest request head the admin API reads.
const MAX_BUF: usize = 64 * 1024;
/// How often a drain watcher checks whether its backend went idle.
const DRAIN_POLL: Duration = Duration::from_millis(25);
/// Content type of `GET /metrics` (what `prometheus-client`'s text encoder produces).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for scrapers and people that do not ask for OpenMetrics.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The status page (no external resources; see `src/admin/status.html`).
const STATUS_PAGE: &str = include_str!("admin/status.html");
/// Reason recorded when an operator drains a backend.
const DRAINED: &str = "drained by operator";
/// Reason recorded when an operator-drained backend became idle.
const DRAINED_IDLE: &str = "drained by operator, idle";
/// Reason recorded when an operator enables a backend.
const ENABLED: &str = "enabled by operator";

/// Where a running instance is in its life, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Config loaded, listeners not listening yet (a `--takeover` start waits for its pools).
    Starting = 0,
    /// Listening and serving.
    Serving = 1,
    /// Shutting down: no new connections, requests in flight finish.
    Stopping = 2,
}

/// The current [`Phase`], shared by `crate::start` (which moves it) and the admin API.
#[derive(Debug, Default)]
pub struct Lifecycle(std::sync::atomic::AtomicU8);

impl Lifecycle {
    /// The current phase.
    pub fn get(&self) -> Phase {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }

    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0
            .store(phase as u8, std::sync::atomic::Ordering::Release);
    }
}

/// Serves the admin API on `listener` until the control token is cancelled. Each connection
/// runs as a task on `control.tasks()`; on cancellation the accept loop stops and open
/// connections finish their current exchange (for at most a short grace period).
///
/// `phase` says whether the instance serves (`/readyz`): it is [`Phase::Starting`] until the
/// proxy listeners listen, and [`Phase::Stopping`] from the moment shutdown begins (before the
/// control token, which is cancelled only after the proxy drained).
pub async fn serve(listener: TcpListener, control: Arc<Control>, phase: Arc<Lifecycle>) {
    let admin = Arc::new(Admin::new(control.clone(), phase));
    let token = control.token().clone();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                control
                    .tasks()
                    .spawn(serve_connection(stream, peer, admin.clone(), token.clone()));
            }
            Err(e) => {
                // Typically EMFILE: back off a little instead of spinning.
                tracing::warn!(error = %e, "admin accept failed");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Serves one admin connection (HTTP/1.1, keep-alive) until it closes or `token` is cancelled.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    admin: Arc<Admin>,
    token: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let admin = admin.clone();
        async move { Ok::<_, Infallible>(admin.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "admin connection ended with an error");
    }
}

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    StatusPage,
    Healthz,
    Readyz,
    Metrics,
    Backends,
    Config,
    Events,
    Reload,
    BackendAction {
        pool: String,
        name: String,
        action: Action,
    },
}

/// An operator action on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Drain,
    Enable,
}

impl Endpoint {
    /// The endpoint a path names, or `None` (404).
    fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/" | "/index.html" => Endpoint::StatusPage,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/metrics" => Endpoint::Metrics,
            "/api/backends" => Endpoint::Backends,
            "/api/config" => Endpoint::Config,
            "/api/events" => Endpoint::Events,
            "/api/reload" => Endpoint::Reload,
            _ => {
                let rest = path.strip_prefix("/api/backends/")?;
                let mut parts = rest.split('/');
                let (pool, name, action) = (parts.next()?, parts.next()?, parts.next()?);
                if parts.next().is_some() || pool.is_empty() || name.is_empty() {
                    return None;
                }
                let action = match action {
                    "drain" => Action::Drain,
                    "enable" => Action::Enable,
                    _ => return None,
                };
                Endpoint::BackendAction {
                    pool: percent_decode(pool)?,
                    name: percent_decode(name)?,
                    action,
                }
            }
        })
    }

    /// Whether the endpoint changes something (`POST`, token required) rather than shows
    /// something (`GET` and `HEAD`, open).
    fn is_action(&self) -> bool {
        matches!(self, Endpoint::Reload | Endpoint::BackendAction { .. })
    }

    /// Whether the endpoint accepts `method`.
    fn allows(&self, method: &Method) -> bool {
        if self.is_action() {
            method == Method::POST
        } else {
            method == Method::GET || method == Method::HEAD
        }
    }

    /// The `Allow` header of a 405 answer.
    fn allow_header(&self) -> &'static str {
        if self.is_action() {
            "POST"
        } else {
            "GET, HEAD"
        }
    }
}

/// An admin answer's body: whole, or the metrics text written while it is sent.
type AdminBody = Either<Full<Bytes>, prometheus::Scrape>;

/// The admin service: the control plane plus the metrics collector, built once.
#[derive(Debug)]
struct Admin {
    control: Arc<Control>,
    metrics: Arc<prometheus::Collector>,
    /// Cancelled when shutdown begins (see [`serve`]).
    phase: Arc<Lifecycle>,
}

impl Admin {
    fn new(control: Arc<Control>, phase: Arc<Lifecycle>) -> Admin {
        let metrics = Arc::new(prometheus::Collector::new(control.clone()));
        Admin {
            control,
            metrics,
            phase,
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.control.shared
    }

    /// Routes one request; every failure is a JSON error answer.
    async fn handle(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let (endpoint, query, openmetrics) = match self.admit(req).await {
            Ok(admitted) => admitted,
            Err(refused) => return refused.map(Either::Left),
        };
        let resp = match endpoint {
            Endpoint::Metrics => return self.metrics(openmetrics).map(Either::Right),
            Endpoint::StatusPage => status_page(),
            Endpoint::Healthz => json_response(StatusCode::OK, &json!({"status": "ok"})),
            Endpoint::Readyz => self.readyz(),
            Endpoint::Backends => json_response(StatusCode::OK, &self.backends_json()),
            Endpoint::Config => json_response(StatusCode::OK, &self.config_json()),
            Endpoint::Events => self.events(query.as_deref()),
            Endpoint::Reload => self.reload().await,
            Endpoint::BackendAction { pool, name, action } => {
                self.backend_action(&pool, &name, action)
            }
        };
        resp.map(Either::Left)
    }

    /// The request's endpoint, query and whether it asks for OpenMetrics, once its method,
    /// origin, token and body pass; else the answer that refuses it.
    async fn admit(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Endpoint, Option<String>, bool), Response<Full<Bytes>>> {
        let Some(endpoint) = Endpoint::from_path(req.uri().path()) else {
            return Err(error(StatusCode::NOT_FOUND, "no such endpoint"));
        };
        if !endpoint.allows(req.method()) {
            let allow = endpoint.allow_header();
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} not allowed; use {allow}", req.method()),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            return Err(resp);
        }
        if endpoint.is_action() {
            let snapshot = self.shared().snapshot();
            if !host_allowed(req.headers(), &snapshot.config.admin.allowed_hosts) {
                tracing::warn!(path = %req.uri().path(), host = ?req.headers().get(header::HOST), "admin request refused: Host names another site");
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "the Host header names neither an IP address, localhost nor one of \
                     [admin] allowed_hosts; refused (DNS rebinding)",
                ));
            }
            if !same_origin(req.headers()) {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "cross-origin admin requests are refused",
                ));
            }
            if !self.authorized(req.headers()) {
                tracing::warn!(path = %req.uri().path(), "admin request refused: missing or wrong token");
                let mut resp = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong admin token (Authorization: Bearer <token>)",
                );
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"syncgate admin\""),
                );
                return Err(resp);
            }
        }
        let query = req.uri().query().map(str::to_owned);
        let openmetrics = req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        read_body(req).await?;
        Ok((endpoint, query, openmetrics))
    }

    /// Whether the request may run a `POST`: no token configured, or the right bearer token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let snapshot = self.shared().snapshot();
        let Some(expected) = &snapshot.config.admin.token else {
            return true;
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return false;
        };
        let Some((scheme, presented)) = value.as_bytes().split_first_chunk::<7>() else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer ")
            && constant_time_eq(presented.trim_ascii(), expected.0.as_bytes())
    }

    /// `GET /readyz`: whether this instance can serve: its config is loaded (the admin API is
    /// served only then), its listeners listen (a `--takeover` start waits for its pools
    /// first), and it is not shutting down. Pool health is shown for people but never changes
    /// the status: an outer load
    /// balancer that dropped every syncgate instance whenever a pool had no ready worker would
    /// turn syncgate's `503` with `Retry-After` into refused connections.
    fn readyz(&self) -> Response<Full<Bytes>> {
        let snapshot = self.shared().snapshot();
        let pools: Map<String, Value> = snapshot
            .pools
            .iter()
            .map(|pool| {
                let ready = pool.backends.iter().filter(|b| b.is_routable()).count();
                let entry = json!({"ready": ready, "backends": pool.backends.len()});
                (pool.name.to_string(), entry)
            })
            .collect();
        let phase = self.phase.get();
        let (status, state) = match phase {
            Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
            Phase::Serving => (StatusCode::OK, "serving"),
            Phase::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        let body = json!({
            "ready": phase == Phase::Serving,
            "status": state,
            "generation": snapshot.generation,
            "pools": pools,
        });
        json_response(status, &body)
    }

    /// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus does), else the
    /// classic Prometheus text format; written while it is sent ([`prometheus::Scrape`]).
    fn metrics(&self, openmetrics: bool) -> Response<prometheus::Scrape> {
        let content_type = if openmetrics {
            OPENMETRICS
        } else {
            PROMETHEUS_TEXT
        };
        let mut resp = Response::new(prometheus::Scrape::new(self.metrics.clone(), openmetrics));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// `GET /api/backends`: the snapshot's pools and backends in config order, then backends
    /// removed from the config that are still draining (`"removed": true`).
    fn backends_json(&self) -> BackendsBody {
        let snapshot = self.shared().snapshot();
        let mut pools: BTreeMap<String, PoolBody> = BTreeMap::new();
        let mut shown = std::collections::HashSet::new();
        for pool in &snapshot.pools {
            let backends: Vec<(Arc<Backend>, Duration)> = pool
                .backends
                .iter()
                .map(|b| {
                    shown.insert(b.id);
                    (b.clone(), pool.slow_start)
                })
                .collect();
            let ready = pool.backends.iter().filter(|b| b.is_routable()).count();
            let discover = self.control.discovery().status(&pool.name);
            let mut fields = object(json!({
                "ready": ready,
                "backends": Value::Null,
                "discover": discover,
                "contract": pool.probe.contract.as_str(),
                "slow_start_ms": duration_ms(pool.slow_start),
                "stats": pool_stats_json(&pool.stats),
            }));
            fields.extend(object(fleet_json(pool)));
            pools.insert(pool.name.to_string(), PoolBody { fields, backends });
        }
        let mut removed: Vec<Arc<Backend>> = self
            .shared()
            .all_backends()
            .into_iter()
            .filter(|b| !shown.contains(&b.id))
            .collect();
        removed.sort_by(|a, b| (&a.pool, &a.name, a.id).cmp(&(&b.pool, &b.name, b.id)));
        for b in removed {
            let entry = pools.entry(b.pool.to_string()).or_insert_with(|| PoolBody {
                fields: object(json!({"ready": 0, "backends": Value::Null, "discover": []})),
                backends: Vec::new(),
            });
            entry.backends.push((b, Duration::ZERO));
        }
        BackendsBody {
            generation: snapshot.generation,
            pools,
        }
    }

    /// `GET /api/config`. Never shows the admin token, only whether one is set.
    fn config_json(&self) -> Value {
        let status = self.control.status();
        let snapshot = self.shared().snapshot();
        let last_error = status.last_error.as_ref().map(|f| {
            let (errors, omitted) = errors_json(&f.errors);
            json!({
                "at": rfc3339(f.at),
                "trigger": f.trigger,
                "errors": errors,
                "errors_omitted": omitted,
            })
        });
        json!({
            "path": status.path.as_ref().map(|p| p.display().to_string()),
            "generation": status.generation,
            "sha256": status.sha256,
            "loaded_at": rfc3339(status.loaded_at),
            "last_error": last_error,
            "reloads_ok": status.reloads_ok,
            "reloads_failed": status.reloads_failed,
            "restart_required": status.restart_required,
            "admin_token_set": snapshot.config.admin.token.is_some(),
        })
    }

    /// `GET /api/events[?since=N]`.
    fn events(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let since = match query_param(query.unwrap_or(""), "since") {
            None => 0,
            Some(v) => match v.parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "since must be a non-negative integer (an event seq)",
                    )
                }
            },
        };
        let events = self.shared().events.since(since);
        let last_seq = events.last().map_or(since, |e| e.seq);
        json_response(
            StatusCode::OK,
            &json!({"events": events, "last_seq": last_seq}),
        )
    }

    /// `POST /api/reload`.
    async fn reload(&self) -> Response<Full<Bytes>> {
        match self.control.reload("api").await {
            Ok(generation) => {
                // What the running config holds (this reload's, unless a newer one applied
                // since): settings in the file that wait for a restart.
                let restart_required = self.control.status().restart_required;
                let body = if restart_required.is_empty() {
                    json!({"generation": generation})
                } else {
                    json!({"generation": generation, "restart_required": restart_required})
                };
                json_response(StatusCode::OK, &body)
            }
            Err(errors) => {
                let (errors, omitted) = errors_json(&errors);
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({
                        "error": "the config did not load; the running config stays",
                        "errors": errors,
                        "errors_omitted": omitted,
                    }),
                )
            }
        }
    }

    /// `POST /api/backends/{pool}/{name}/drain|enable`.
    fn backend_action(&self, pool: &str, name: &str, action: Action) -> Response<Full<Bytes>> {
        let shared = self.shared();
        let snapshot = shared.snapshot();
        let Some(p) = snapshot.pool(pool) else {
            return error(StatusCode::NOT_FOUND, &format!("no pool named {pool:?}"));
        };
        let Some(backend) = p.backends.iter().find(|b| &*b.name == name) else {
            return error(
                StatusCode::NOT_FOUND,
                &format!("pool {pool:?} has no backend named {name:?}"),
            );
        };
        let changed = match action {
            Action::Drain => {
                let changed = backend.transition(
                    &[State::Pending, State::Ready, State::Ejected],
                    State::Draining,
                    DRAINED,
                    &shared.events,
                );
                if changed {
                    self.control.tasks().spawn(finish_drain(
                        backend.clone(),
                        shared.clone(),
                        self.control.token().clone(),
                    ));
                }
                changed
            }
            Action::Enable => backend.transition(
                &[State::Disabled, State::Draining],
                State::Pending,
                ENABLED,
                &shared.events,
            ),
        };
        let mut body = backend_json(backend, p.slow_start);
        if let Some(obj) = body.as_object_mut() {
            obj.insert("pool".into(), Value::from(pool));
            obj.insert("changed".into(), Value::from(changed));
        }
        json_response(StatusCode::OK, &body)
    }
}

/// Moves an operator-drained backend to `disabled` once its in-flight requests finished. Stops
/// early when the backend leaves `draining` (enabled again) or the config (the reload's own
/// drain takes over), or on shutdown.
async fn finish_drain(backend: Arc<Backend>, shared: Arc<Shared>, token: CancellationToken) {
    loop {
        if backend.state() != State::Draining || backend.is_removed() {
            return;
        }
        if backend.in_flight() == 0 {
            backend.transition(
                &[State::Draining],
                State::Disabled,
                DRAINED_IDLE,
                &shared.events,
            );
            return;
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
}

/// Whether a request may be an operator action as far as browsers are concerned: either it
/// carries no `Origin` (curl, scripts, monitoring) or its `Origin` is the admin endpoint itself.
/// This keeps a web page on another site from driving a token-less admin API on loopback
/// through the operator's browser (a cross-site `POST` needs no CORS preflight).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    match (origin.as_bytes().strip_prefix(b"http://"), host) {
        (Some(origin_host), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// Whether the request's `Host` may be an operator's: an IP address (a browser sends one only
/// when the page itself was loaded from that address), `localhost` (which browsers resolve to
/// loopback themselves), or a name the operator listed in `allowed_hosts` (lower-case). Any
/// other name could be an attacker's that resolves to the admin address (DNS rebinding),
/// whose page then passes the `Origin` check. The port is not compared: it cannot be rebound.
/// No `Host` at all is no browser.
fn host_allowed(headers: &HeaderMap, allowed_hosts: &[String]) -> bool {
    let Some(value) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let host = crate::host::strip_port(value).to_ascii_lowercase();
    let ip = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map_or_else(
            || host.parse::<std::net::Ipv4Addr>().is_ok(),
            |v6| v6.parse::<std::net::Ipv6Addr>().is_ok(),
        );
    ip || host == "localhost" || allowed_hosts.contains(&host)
}

/// Reads (and discards) the request body, answering 413 when it exceeds [`MAX_BODY`].
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body over {} KiB", MAX_BODY / 1024),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        // A client that sends its whole body before reading the answer gets a reset instead
        // of the 413 when the connection closes with its body unread: read and discard up to
        // a bound first (as nginx's lingering close), and close after the answer.
        let mut body = req.into_body();
        let discard = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > DISCARD_MAX {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, discard).await;
        let mut answer = too_large();
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Err(answer);
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "cannot read the request body",
        )),
    }
}

/// The status page.
fn status_page() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A JSON answer.
fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A JSON error answer `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": message}))
}

/// Whether two byte strings are equal, in time that depends only on their lengths (a length
/// mismatch is `false` at once).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The raw value of `name` in a query string (`a=1&since=5`), percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| percent_decode(v))
}

/// Decodes `%XX` escapes of a path segment or query value; `None` for a malformed escape or
/// invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    // The crate passes a malformed escape (`%`, `%zz`, `%+1`) through as text, as URLs do;
    // in a backend name or an event seq it is refused instead.
    let malformed = s.split('%').skip(1).any(|rest| {
        !rest
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
    Some(decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn routes() {
        assert_eq!(Endpoint::from_path("/"), Some(Endpoint::StatusPage));
        assert_eq!(Endpoint::from_path("/api/reload"), Some(Endpoint::Reload));
        assert_eq!(
            Endpoint::from_path("/api/backends/push/w%201/drain"),
            Some(Endpoint::BackendAction {
                pool: "push".into(),
                name: "w 1".into(),
                action: Action::Drain,
            })
        );
        let enable = Endpoint::from_path("/api/backends/push/w1/enable");
        assert!(enable.as_ref().is_some_and(|e| e.allows(&Method::POST)));
        assert!(enable.as_ref().is_some_and(|e| !e.allows(&Method::GET)));
        let health = Endpoint::from_path("/healthz");
        assert!(health.as_ref().is_some_and(|e| e.allows(&Method::HEAD)));
        assert!(health.as_ref().is_some_and(|e| !e.allows(&Method::POST)));
        for bad in [
            "/nope",
            "/api/backends/",
            "/api/backends/push",
            "/api/backends/push/w1",
            "/api/backends/push/w1/explode",
            "/api/backends/push/w1/drain/x",
            "/api/backends//w1/drain",
            "/api/backends/push/%zz/drain",
            "/healthz/",
        ] {
            assert_eq!(Endpoint::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn cross_origin_actions_are_refused() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9901")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:9901"
        )])));
    }

    #[test]
    fn only_addresses_localhost_and_allowed_names_may_drive_the_api() {
        let host = |h: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_static(h));
            m
        };
        let allowed = ["admin.example.com".to_owned()];
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "[::1]:9901",
            "[::1]",
            "10.1.2.3:9901",
            "localhost:9901",
            "LocalHost",
            "admin.example.com:443",
            "Admin.Example.COM",
        ] {
            assert!(host_allowed(&host(ok), &allowed), "{ok}");
        }
        for refused in [
            "rebind.evil.example:9901",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[::1].evil.example",
            "example.com",
            "",
        ] {
            assert!(!host_allowed(&host(refused), &allowed), "{refused}");
        }
        assert!(host_allowed(&HeaderMap::new(), &[]), "no Host: no browser");
    }

    #[test]
    fn query_and_percent_decoding() {
        assert_eq!(query_param("since=5", "since").as_deref(), Some("5"));
        assert_eq!(query_param("a=1&since=7", "since").as_deref(), Some("7"));
        assert_eq!(query_param("a=1", "since"), None);
        assert_eq!(query_param("since", "since").as_deref(), Some(""));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%+1"), None);
    }

    #[test]
    fn the_backends_body_writes_the_bytes_of_the_value_tree_it_replaces() {
        let backends: Vec<(Arc<Backend>, Duration)> = ["w1", "w2"]
            .iter()
            .map(|name| {
                let b = Backend::new("push", name, "127.0.0.1:1".parse().unwrap(), 1);
                (Arc::new(b), Duration::from_secs(30))
            })
            .collect();
        let fields =
            json!({"ready": 0, "backends": Value::Null, "discover": [], "stats": {"a": 1}});
        let body = BackendsBody {
            generation: 3,
            pools: BTreeMap::from([(
                "push".to_string(),
                PoolBody {
                    fields: object(fields),
                    backends: backends.clone(),
                },
            )]),
        };
        let tree: Vec<Value> = backends.iter().map(|(b, s)| backend_json(b, *s)).collect();
        let expected = json!({"generation": 3, "pools": {"push": {
            "ready": 0, "backends": tree, "discover": [], "stats": {"a": 1},
        }}});
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }
}
