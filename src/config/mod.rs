//! Configuration: raw TOML types → validated [`Config`].
//!
//! Three layers keep untrusted input away from the request path:
//! 1. `raw` serde types mirror the TOML file exactly (`deny_unknown_fields`, spans kept);
//! 2. [`Config`] is the validated, typed form (addresses parsed, durations and sizes converted,
//!    cross references checked); validation reports *every* error at once with file:line:col;
//! 3. [`crate::snapshot::Snapshot`] is the runtime form built from a `Config`.
//!
//! Raw types never leave this module.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use toml::Spanned;

/// A validated configuration. Built only by [`Config::load`] / [`Config::parse`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config was read from (None when parsed from a string without a path).
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[admin]` (always present; defaults apply when the table is absent).
    pub admin: AdminConfig,
    /// `[pools.*]`, sorted by name.
    pub pools: Vec<PoolConfig>,
    /// `[[routes]]` in file order. When the file has no routes and exactly one pool, one
    /// catch-all route to that pool is synthesised here.
    pub routes: Vec<RouteConfig>,
}

/// `[server]`: the client-facing listeners and their limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Plain listeners (HTTP/1.1 and HTTP/2 with prior knowledge). Default `["127.0.0.1:8080"]`.
    pub listen: Vec<SocketAddr>,
    /// Proxy worker threads; 0 means one per core. Default 0.
    pub worker_threads: usize,
    /// A client must send its request headers within this. Default 10 s.
    pub header_read_timeout: Duration,
    /// Deadline for the whole upstream exchange (until response headers). Default 30 s.
    pub request_timeout: Duration,
    /// Larger request bodies are answered 413. Bytes; default 8 MiB.
    pub max_request_body: u64,
    /// Accepted client connections at once; more wait in the kernel backlog. Default 10000.
    pub max_connections: usize,
    /// Graceful shutdown deadline, and how long removed backends may drain. Default 30 s.
    pub drain_timeout: Duration,
    /// A client connection with no request in progress (none waiting for its response
    /// headers) for this long is closed gracefully: HTTP/2 `GOAWAY`, HTTP/1.1 no keep-alive;
    /// a response body still streaming finishes. HTTP/1.1 also stops at
    /// `header_read_timeout` between requests. Default 75 s, nginx's `keepalive_timeout`.
    pub idle_timeout: Duration,
    /// `[server.tls]`, optional HTTPS listeners.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`: HTTPS listeners served with rustls (ALPN h2 and http/1.1).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// TLS listeners. Required, at least one.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, resolved against the config file's directory.
    pub cert: PathBuf,
    /// PEM private key, resolved against the config file's directory.
    pub key: PathBuf,
}

/// `[admin]`: the admin HTTP listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin listen address. Default `127.0.0.1:9901`.
    pub listen: SocketAddr,
    /// Path of the bearer token file, resolved against the config file's directory.
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` (trimmed). Never printed.
    pub token: Option<AdminToken>,
}

/// A secret admin bearer token; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Backend selection algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Least in-flight of two weighted random picks (default).
    P2c,
    /// Smooth weighted round robin.
    RoundRobin,
    /// Consistent hashing on `hash_header`.
    Hash,
}

/// How a probe answer is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// The key-sync JSON contract of DESIGN.md (default).
    KeySync,
    /// Any 2xx passes.
    Status,
}

/// `[pools.NAME]`: a pool of equivalent workers.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The table key.
    pub name: String,
    /// Default `p2c`.
    pub balance: Balance,
    /// Header hashed with `balance = "hash"`. Default `authorization`.
    pub hash_header: HeaderName,
    /// A newly admitted backend's weight ramps up linearly over this. Default 10 s; 0 disables.
    pub slow_start: Duration,
    /// Other backends tried after a connect failure. Default 2.
    pub retries: u32,
    /// `[pools.NAME.probe]`.
    pub probe: ProbeConfig,
    /// `[pools.NAME.guard]`.
    pub guard: GuardConfig,
    /// `[pools.NAME.upstream_tls]`, optional TLS to the workers.
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// `[[pools.NAME.backends]]`, in file order. At least one.
    pub backends: Vec<BackendConfig>,
}

/// `[pools.NAME.probe]`: the readiness probe.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Probe path, must start with `/`. Default `/ready`.
    pub path: String,
    /// Time between probes. Default 1 s.
    pub interval: Duration,
    /// A probe slower than this fails. Default 500 ms, or `interval` when that is shorter;
    /// must not exceed `interval`.
    pub timeout: Duration,
    /// Consecutive passes that admit a backend. Default 2, at least 1.
    pub rise: u32,
    /// Consecutive failures that eject a ready backend. Default 2, at least 1.
    pub fall: u32,
    /// Default `key-sync`.
    pub contract: Contract,
    /// Generations a backend may lag the newest ready peer. Default 10.
    pub max_generation_lag: u64,
    /// Minimum share of the ready peers' median key count. Default 0.98, in [0, 1].
    pub min_key_ratio: f64,
}

/// `[pools.NAME.guard]`: the response guard and passive outlier detection.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Statuses that need a second opinion. Default `[401, 403]`.
    pub statuses: Vec<StatusCode>,
    /// Request bodies up to this size are kept for a replay. Bytes; default 1 MiB.
    pub max_replay_body: u64,
    /// Contradictions within `eject_window` that eject a backend at once. Default 3.
    pub eject_after: u32,
    /// Window for `eject_after`. Default 10 s.
    pub eject_window: Duration,
    /// Consecutive connect failures that eject a backend. Default 5; 0 disables.
    pub consecutive_connect_failures: u32,
    /// Consecutive 5xx answers that eject a backend. Default 5; 0 disables.
    pub consecutive_5xx: u32,
    /// Passive ejection never takes out more than this share (percent) of the pool's ready and
    /// ejected backends, and never the last ready one. Default 50.
    pub max_ejection_percent: u32,
    /// Replays and retries may add at most this share of the pool's requests. Default 0.2.
    pub retry_budget_ratio: f64,
    /// Retries always allowed per second regardless of the ratio. Default 10.
    pub retry_budget_min_per_sec: u32,
    /// Window over which the retry budget is measured. Default 10 s.
    pub retry_budget_window: Duration,
}

/// `[pools.NAME.upstream_tls]`: TLS from syncgate to the workers.
#[derive(Debug, Clone)]
pub struct UpstreamTlsConfig {
    /// PEM CA bundle to verify workers; absent: the platform's web PKI roots are not bundled, so
    /// this is required.
    pub ca: PathBuf,
    /// SNI and verified name; absent: the backend's IP address.
    pub server_name: Option<String>,
    /// The rustls client config trusting `ca` (ALPN `http/1.1`), built at validation so that a
    /// CA file that does not parse is a config error with its position.
    pub client: Arc<rustls::ClientConfig>,
    /// Identity of this TLS setup (CA bytes and server name; never 0, which stands for plain
    /// TCP): pooled connections opened under another one are not reused after a reload.
    pub fingerprint: u64,
}

/// A non-zero digest of the CA bundle and the server name.
fn tls_fingerprint(pem: &[u8], server_name: Option<&str>) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(pem);
    ctx.update(&[0]);
    ctx.update(server_name.unwrap_or("").as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first).max(1)
}

/// A rustls client config trusting the PEM certificates in `pem`, offering HTTP/1.1.
fn upstream_client_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// `[[pools.NAME.backends]]`: one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Unique in its pool; the backend's identity for state and admin.
    pub name: String,
    /// `IP:port` of the worker; a `host:port` in the file is resolved at load (the lowest
    /// IPv4 address preferred).
    pub addr: SocketAddr,
    /// Relative weight, 1..=1000. Default 1.
    pub weight: u32,
}

/// `[[routes]]`: which pool serves a request.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host match; None matches any host.
    pub host: Option<HostMatch>,
    /// Path prefix, starts with `/`. Default `/`.
    pub path_prefix: String,
    /// Name of the pool (validated to exist in [`Config::pools`]).
    pub pool: String,
}

/// A route's host pattern, lower-cased, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `push.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

/// One problem in a config file, with its position (1-based line and column, the column counted
/// in characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ConfigError {
    /// The file's path as given, or `<config>` for text parsed without a path.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// One sentence saying what is wrong.
    pub message: String,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file's path as given.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config: every error found, sorted by position,
    /// never empty. Displayed one error per line.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<ConfigError>),
}

fn display_lines(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    /// The errors with their positions. An [`LoadError::Io`] becomes one error at line 1,
    /// column 1 of the file.
    pub fn errors(&self) -> Vec<ConfigError> {
        match self {
            LoadError::Io { path, source } => vec![ConfigError {
                file: path.clone(),
                line: 1,
                col: 1,
                message: format!("cannot read the config file: {source}"),
            }],
            LoadError::Invalid(errors) => errors.clone(),
        }
    }
}

impl Config {
    /// Reads and validates the file; relative paths (tls cert/key, token_file, upstream_tls ca)
    /// resolve against the file's directory.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, Some(path))
    }

    /// Validates TOML text. `path` is used for error messages and to resolve relative paths
    /// (None: paths stay relative to the current directory, and errors say `<config>`).
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, LoadError> {
        let mut v = Validator {
            text,
            file: path.map_or_else(|| "<config>".to_owned(), |p| p.display().to_string()),
            base: path.and_then(Path::parent).map(Path::to_path_buf),
            errors: Vec::new(),
        };
        let file: raw::File = match toml::from_str(text) {
            Ok(file) => file,
            Err(e) => {
                // toml puts details on further lines; keep one error on one line.
                let message = e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                v.error(e.span(), message);
                return Err(LoadError::Invalid(v.errors));
            }
        };
        let config = v.config(&file, path);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            v.errors.sort_by_key(|e| (e.line, e.col));
            Err(LoadError::Invalid(v.errors))
        }
    }
}

mod raw;
mod syntax;

use syntax::{is_dns_name, is_valid_name, parse_host, parse_size};

fn span_of<T>(value: &Spanned<T>) -> Option<Range<usize>> {
    Some(value.span())
}

/// Whether a duration may be zero.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Rejected,
}

/// A key whose value must be a file: its raw value (if present) and where to point when absent.
struct FileKey<'r> {
    name: &'r str,
    value: Option<&'r Spanned<String>>,
    table: Option<Range<usize>>,
}

/// A listener address with where it came from, to find two listeners on one address.
struct Listener {
    addr: SocketAddr,
    key: &'static str,
    span: Option<Range<usize>>,
}

/// Collects every error of one file while building the [`Config`].
struct Validator<'a> {
    text: &'a str,
    file: String,
    base: Option<PathBuf>,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    /// Records an error at a byte span (None: line 1, column 1).
    fn error(&mut self, span: Option<Range<usize>>, message: impl fmt::Display) {
        let (line, col) = span.map_or((1, 1), |s| self.position(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            col,
            message: message.to_string(),
        });
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match &self.base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        }
    }

    fn config(&mut self, file: &raw::File, path: Option<&Path>) -> Config {
        let (server, mut listeners) = self.server(file.server.as_ref());
        let admin = self.admin(file.admin.as_ref(), &mut listeners);
        self.distinct_listeners(&listeners);
        let pools = self.pools(file.pools.as_ref());
        let routes = self.routes(file.routes.as_deref().unwrap_or_default(), &pools);
        Config {
            source: path.map(Path::to_path_buf),
            server,
            admin,
            pools,
            routes,
        }
    }

    // ---- value helpers: each records its error and returns the default on failure ----

    fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        name: &str,
        value: Option<&Spanned<i64>>,
        default: T,
        min: i64,
        max: Option<i64>,
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        let x = *value.get_ref();
        let in_range = x >= min && max.map_or(true, |max| x <= max);
        let converted = if in_range { T::try_from(x).ok() } else { None };
        if let Some(converted) = converted {
            return converted;
        }
        let message = match max {
            _ if in_range => format!("{name} is too large (got {x})"),
            None if min == 0 => format!("{name} must not be negative (got {x})"),
            None => format!("{name} must be at least {min} (got {x})"),
            Some(max) if min == 0 && x >= 0 => format!("{name} must be at most {max} (got {x})"),
            Some(max) => format!("{name} must be between {min} and {max} (got {x})"),
        };
        self.error(span_of(value), message);
        default
    }

    fn float(
        &mut self,
        name: &str,
        value: Option<&Spanned<f64>>,
        default: f64,
        range: std::ops::RangeInclusive<f64>,
    ) -> f64 {
        let Some(value) = value else {
            return default;
        };
        let x = *value.get_ref();
        if range.contains(&x) {
            return x;
        }
        self.error(
            span_of(value),
            format!(
                "{name} must be between {} and {} (got {x})",
                range.start(),
                range.end()
            ),
        );
        default
    }

    /// None when the value is present but invalid.
    fn duration(
        &mut self,
        name: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
        zero: Zero,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(default);
        };
        let text = value.get_ref();
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && zero == Zero::Rejected => {
                self.error(span_of(value), format!("{name} must be greater than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    span_of(value),
                    format!(
                        "{name} \"{text}\" is not a duration ({e}); expected e.g. \"250ms\", \
                         \"2s\" or \"1m\""
                    ),
                );
                None
            }
        }
    }

    fn size(
        &mut self,
        name: &str,
        value: Option<&Spanned<raw::Size>>,
        default: u64,
        zero: Zero,
    ) -> u64 {
        let Some(value) = value else {
            return default;
        };
        let parsed = match value.get_ref() {
            raw::Size::Bytes(n) => {
                u64::try_from(*n).map_err(|_| format!("{name} must not be negative (got {n})"))
            }
            raw::Size::Text(text) => parse_size(text).map_err(|why| {
                format!(
                    "{name} \"{text}\" is not a size ({why}); expected e.g. \"512KiB\", \
                     \"8MiB\" or a number of bytes"
                )
            }),
        };
        match parsed {
            Ok(0) if zero == Zero::Rejected => {
                self.error(span_of(value), format!("{name} must be greater than 0"));
                default
            }
            Ok(n) => n,
            Err(message) => {
                self.error(span_of(value), message);
                default
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        name: &str,
        value: Option<&Spanned<String>>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some((_, t)) = options.iter().find(|(s, _)| s == value.get_ref()) {
            return *t;
        }
        let allowed = options
            .iter()
            .map(|(s, _)| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        self.error(
            span_of(value),
            format!("{name} \"{}\" is not one of {allowed}", value.get_ref()),
        );
        default
    }

    fn addr(&mut self, what: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        let parsed = value.get_ref().parse().ok();
        if parsed.is_none() {
            self.error(
                span_of(value),
                format!(
                    "{what} \"{}\" is not IP:port, e.g. \"127.0.0.1:8080\"",
                    value.get_ref()
                ),
            );
        }
        parsed
    }

    /// A backend address: `IP:port`, or `host:port` resolved now (at load and at each reload,
    /// the lowest IPv4 address preferred, as workers commonly listen on IPv4 only).
    fn backend_addr(&mut self, value: &Spanned<String>) -> Option<SocketAddr> {
        let text = value.get_ref();
        if let Ok(addr) = text.parse() {
            return Some(addr);
        }
        let host_port = text
            .rsplit_once(':')
            .filter(|(host, _)| is_dns_name(host))
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        let Some((host, port)) = host_port else {
            self.error(
                span_of(value),
                format!(
                    "backend address \"{text}\" is not IP:port or host:port, e.g. \"10.0.0.11:9000\""
                ),
            );
            return None;
        };
        let mut resolved: Vec<SocketAddr> =
            match std::net::ToSocketAddrs::to_socket_addrs(&(host, port)) {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    self.error(
                        span_of(value),
                        format!("backend address \"{text}\" does not resolve: {e}"),
                    );
                    return None;
                }
            };
        // Sorted, so that a round-robin resolver answering in another order at the next reload
        // does not change the backend's identity (and send it back to `pending`).
        resolved.sort();
        let chosen = resolved
            .iter()
            .find(|a| a.is_ipv4())
            .or(resolved.first())
            .copied();
        if chosen.is_none() {
            self.error(
                span_of(value),
                format!("backend address \"{text}\" resolves to no address"),
            );
        }
        chosen
    }

    fn addrs(
        &mut self,
        key: &'static str,
        value: &raw::Addrs,
        out: &mut Vec<Listener>,
    ) -> Vec<SocketAddr> {
        let mut addrs = Vec::new();
        for entry in value.get_ref() {
            if let Some(addr) = self.addr(&format!("{key} address"), entry) {
                addrs.push(addr);
                out.push(Listener {
                    addr,
                    key,
                    span: span_of(entry),
                });
            }
        }
        addrs
    }

    /// A path that must name a readable file; resolved against the config's directory.
    fn file(&mut self, key: FileKey<'_>) -> PathBuf {
        let Some(value) = key.value else {
            self.error(key.table, format!("{} is required", key.name));
            return PathBuf::new();
        };
        if value.get_ref().is_empty() {
            self.error(span_of(value), format!("{} must not be empty", key.name));
            return PathBuf::new();
        }
        let path = self.resolve(value.get_ref());
        let problem = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => Some("is a directory".to_owned()),
            Ok(_) => std::fs::File::open(&path)
                .err()
                .map(|e| format!("cannot be read: {e}")),
            Err(e) => Some(format!("cannot be read: {e}")),
        };
        if let Some(problem) = problem {
            self.error(
                span_of(value),
                format!("{} file \"{}\" {problem}", key.name, path.display()),
            );
        }
        path
    }

    // ---- sections ----

    fn server(&mut self, node: Option<&raw::Node<raw::Server>>) -> (ServerConfig, Vec<Listener>) {
        let absent = raw::Server::default();
        let (span, s) = node.map_or((None, &absent), |n| (n.span.clone(), &n.value));
        let mut listeners = Vec::new();
        let listen = match &s.listen {
            Some(list) => self.addrs("server.listen", list, &mut listeners),
            None => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
                listeners.push(Listener {
                    addr,
                    key: "server.listen",
                    span: None,
                });
                vec![addr]
            }
        };
        let tls = s
            .tls
            .as_ref()
            .map(|t| self.tls(t, span.clone(), &mut listeners));
        if let (Some(list), None) = (&s.listen, &tls) {
            if list.get_ref().is_empty() {
                self.error(
                    span_of(list),
                    "server.listen is empty and there is no [server.tls]; at least one listener \
                     is required",
                );
            }
        }
        let secs = Duration::from_secs;
        let server = ServerConfig {
            listen,
            worker_threads: self.int(
                "server.worker_threads",
                s.worker_threads.as_ref(),
                0,
                0,
                Some(1024),
            ),
            header_read_timeout: self
                .duration(
                    "server.header_read_timeout",
                    s.header_read_timeout.as_ref(),
                    secs(10),
                    Zero::Rejected,
                )
                .unwrap_or(secs(10)),
            request_timeout: self
                .duration(
                    "server.request_timeout",
                    s.request_timeout.as_ref(),
                    secs(30),
                    Zero::Rejected,
                )
                .unwrap_or(secs(30)),
            max_request_body: self.size(
                "server.max_request_body",
                s.max_request_body.as_ref(),
                8 << 20,
                Zero::Rejected,
            ),
            max_connections: self.int(
                "server.max_connections",
                s.max_connections.as_ref(),
                10_000,
                1,
                None,
            ),
            drain_timeout: self
                .duration(
                    "server.drain_timeout",
                    s.drain_timeout.as_ref(),
                    secs(30),
                    Zero::Rejected,
                )
                .unwrap_or(secs(30)),
            idle_timeout: self
                .duration(
                    "server.idle_timeout",
                    s.idle_timeout.as_ref(),
                    secs(75),
                    Zero::Rejected,
                )
                .unwrap_or(secs(75)),
            tls,
        };
        (server, listeners)
    }

    fn tls(
        &mut self,
        node: &raw::Node<raw::Tls>,
        server_span: Option<Range<usize>>,
        listeners: &mut Vec<Listener>,
    ) -> TlsConfig {
        let span = node.span.clone().or(server_span);
        let t = &node.value;
        let listen = match &t.listen {
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(
                        span_of(list),
                        "server.tls.listen must name at least one address",
                    );
                }
                self.addrs("server.tls.listen", list, listeners)
            }
            None => {
                self.error(
                    span.clone(),
                    "server.tls.listen is required, e.g. listen = [\"0.0.0.0:8443\"]",
                );
                Vec::new()
            }
        };
        let before = self.errors.len();
        let cert = self.file(FileKey {
            name: "server.tls.cert",
            value: t.cert.as_ref(),
            table: span.clone(),
        });
        let key = self.file(FileKey {
            name: "server.tls.key",
            value: t.key.as_ref(),
            table: span,
        });
        // Both files are readable: load them as the listener will, so that a certificate or
        // key that does not parse or does not match fails `check` and a reload whole, at the
        // key that names the bad file.
        if self.errors.len() == before {
            if let Err(e) = crate::tls::load_certified_key(&cert, &key) {
                let at = match e {
                    crate::tls::TlsError::Key { .. } => t.key.as_ref(),
                    _ => t.cert.as_ref(),
                };
                self.error(at.and_then(span_of), format!("server.tls: {}", e));
            }
        }
        TlsConfig { listen, cert, key }
    }

    fn admin(
        &mut self,
        node: Option<&raw::Node<raw::Admin>>,
        listeners: &mut Vec<Listener>,
    ) -> AdminConfig {
        let absent = raw::Admin::default();
        let a = node.map_or(&absent, |n| &n.value);
        let default = SocketAddr::from((Ipv4Addr::LOCALHOST, 9901));
        let listen = match &a.listen {
            Some(value) => self.addr("admin.listen address", value),
            None => Some(default),
        };
        if let Some(addr) = listen {
            listeners.push(Listener {
                addr,
                key: "admin.listen",
                span: a.listen.as_ref().and_then(span_of),
            });
        }
        let (token_file, token) = match &a.token_file {
            Some(value) => {
                let (path, token) = self.token(value);
                (Some(path), token)
            }
            None => {
                if let (Some(addr), Some(value)) = (listen, &a.listen) {
                    if !addr.ip().is_loopback() {
                        self.error(
                            span_of(value),
                            format!("admin.listen {addr} is not loopback; set admin.token_file"),
                        );
                    }
                }
                (None, None)
            }
        };
        AdminConfig {
            listen: listen.unwrap_or(default),
            token_file,
            token,
        }
    }

    fn token(&mut self, value: &Spanned<String>) -> (PathBuf, Option<AdminToken>) {
        if value.get_ref().is_empty() {
            self.error(span_of(value), "admin.token_file must not be empty");
            return (PathBuf::new(), None);
        }
        let path = self.resolve(value.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => {
                self.error(
                    span_of(value),
                    format!("admin.token_file \"{}\" is empty", path.display()),
                );
                (path, None)
            }
            Ok(text) => {
                let token = AdminToken(text.trim().to_owned());
                (path, Some(token))
            }
            Err(e) => {
                self.error(
                    span_of(value),
                    format!(
                        "admin.token_file \"{}\" cannot be read: {e}",
                        path.display()
                    ),
                );
                (path, None)
            }
        }
    }

    /// Two listeners on one address (port 0 excepted) cannot both bind. The error points at
    /// the later one, or at the earlier one when the later is a default.
    fn distinct_listeners(&mut self, listeners: &[Listener]) {
        let mut seen: HashMap<SocketAddr, &Listener> = HashMap::new();
        for later in listeners.iter().filter(|l| l.addr.port() != 0) {
            let Some(earlier) = seen.get(&later.addr).copied() else {
                seen.insert(later.addr, later);
                continue;
            };
            let (at, other) = if later.span.is_some() {
                (later, earlier)
            } else {
                (earlier, later)
            };
            self.error(
                at.span.clone(),
                format!(
                    "{} address {} is already used by {}",
                    at.key, at.addr, other.key
                ),
            );
        }
    }

    fn pools(
        &mut self,
        pools: Option<&BTreeMap<Spanned<String>, raw::Node<raw::Pool>>>,
    ) -> Vec<PoolConfig> {
        let Some(pools) = pools.filter(|p| !p.is_empty()) else {
            self.error(
                None,
                "no pools are configured; add a [pools.NAME] table with at least one \
                 [[pools.NAME.backends]]",
            );
            return Vec::new();
        };
        pools
            .iter()
            .map(|(name, node)| self.pool(name, node))
            .collect()
    }

    fn pool(&mut self, key: &Spanned<String>, node: &raw::Node<raw::Pool>) -> PoolConfig {
        let name = key.get_ref().as_str();
        let key_span = span_of(key);
        if name.is_empty() {
            self.error(key_span.clone(), "pool name must not be empty");
        } else if !is_valid_name(name) {
            self.error(
                key_span.clone(),
                format!("pool name \"{name}\" may only use letters, digits, '_', '.' and '-'"),
            );
        }
        let p = &node.value;
        let balance = self.choice(
            &format!("pools.{name}.balance"),
            p.balance.as_ref(),
            Balance::P2c,
            &[
                ("p2c", Balance::P2c),
                ("round_robin", Balance::RoundRobin),
                ("hash", Balance::Hash),
            ],
        );
        let hash_header = match &p.hash_header {
            Some(value) => HeaderName::from_bytes(value.get_ref().to_ascii_lowercase().as_bytes())
                .unwrap_or_else(|_| {
                    self.error(
                        span_of(value),
                        format!(
                            "pools.{name}.hash_header \"{}\" is not a valid HTTP header name",
                            value.get_ref()
                        ),
                    );
                    http::header::AUTHORIZATION
                }),
            None => http::header::AUTHORIZATION,
        };
        let slow_start = self
            .duration(
                &format!("pools.{name}.slow_start"),
                p.slow_start.as_ref(),
                Duration::from_secs(10),
                Zero::Allowed,
            )
            .unwrap_or_default();
        let retries = self.int(
            &format!("pools.{name}.retries"),
            p.retries.as_ref(),
            2,
            0,
            None,
        );
        let probe = self.probe(name, p.probe.as_ref(), key_span.clone());
        let guard = self.guard(name, p.guard.as_ref());
        let upstream_tls = p
            .upstream_tls
            .as_ref()
            .and_then(|t| self.upstream_tls(name, t, key_span.clone()));
        let backends = self.backends(name, p.backends.as_deref().unwrap_or_default(), key_span);
        PoolConfig {
            name: name.to_owned(),
            balance,
            hash_header,
            slow_start,
            retries,
            probe,
            guard,
            upstream_tls,
            backends,
        }
    }

    fn probe(
        &mut self,
        pool: &str,
        node: Option<&raw::Node<raw::Probe>>,
        pool_span: Option<Range<usize>>,
    ) -> ProbeConfig {
        let absent = raw::Probe::default();
        let (span, p) = node.map_or((pool_span.clone(), &absent), |n| {
            (n.span.clone().or(pool_span), &n.value)
        });
        let name = |key: &str| format!("pools.{pool}.probe.{key}");
        let path = match &p.path {
            Some(value) => {
                let path = value.get_ref();
                if !path.starts_with('/') {
                    self.error(
                        span_of(value),
                        format!("{} \"{path}\" must start with '/'", name("path")),
                    );
                } else if path.parse::<http::uri::PathAndQuery>().is_err() {
                    self.error(
                        span_of(value),
                        format!("{} \"{path}\" is not a valid URI path", name("path")),
                    );
                }
                path.clone()
            }
            None => "/ready".to_owned(),
        };
        let interval = self.duration(
            &name("interval"),
            p.interval.as_ref(),
            Duration::from_secs(1),
            Zero::Rejected,
        );
        // Unset, the timeout is 500 ms or the interval if shorter: setting only a short
        // interval is a complete, valid way to probe faster.
        let default_timeout = interval.map_or(Duration::from_millis(500), |i| {
            i.min(Duration::from_millis(500))
        });
        let timeout = self.duration(
            &name("timeout"),
            p.timeout.as_ref(),
            default_timeout,
            Zero::Rejected,
        );
        if let (Some(interval), Some(timeout)) = (interval, timeout) {
            if timeout > interval {
                let at = p
                    .timeout
                    .as_ref()
                    .or(p.interval.as_ref())
                    .map_or(span, |v| Some(v.span()));
                self.error(
                    at,
                    format!(
                        "{} ({}) must not exceed probe.interval ({})",
                        name("timeout"),
                        humantime::format_duration(timeout),
                        humantime::format_duration(interval)
                    ),
                );
            }
        }
        ProbeConfig {
            path,
            interval: interval.unwrap_or(Duration::from_secs(1)),
            timeout: timeout.unwrap_or(Duration::from_millis(500)),
            rise: self.int(&name("rise"), p.rise.as_ref(), 2, 1, None),
            fall: self.int(&name("fall"), p.fall.as_ref(), 2, 1, None),
            contract: self.choice(
                &name("contract"),
                p.contract.as_ref(),
                Contract::KeySync,
                &[
                    ("key-sync", Contract::KeySync),
                    ("status", Contract::Status),
                ],
            ),
            max_generation_lag: self.int(
                &name("max_generation_lag"),
                p.max_generation_lag.as_ref(),
                10,
                0,
                None,
            ),
            min_key_ratio: self.float(
                &name("min_key_ratio"),
                p.min_key_ratio.as_ref(),
                0.98,
                0.0..=1.0,
            ),
        }
    }

    fn guard(&mut self, pool: &str, node: Option<&raw::Node<raw::Guard>>) -> GuardConfig {
        let absent = raw::Guard::default();
        let g = node.map_or(&absent, |n| &n.value);
        let name = |key: &str| format!("pools.{pool}.guard.{key}");
        let statuses = match &g.statuses {
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|code| {
                    let status = u16::try_from(*code.get_ref())
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .and_then(|c| StatusCode::from_u16(c).ok());
                    if status.is_none() {
                        self.error(
                            span_of(code),
                            format!(
                                "{} entry {} is not an HTTP status (100 to 599)",
                                name("statuses"),
                                code.get_ref()
                            ),
                        );
                    }
                    status
                })
                .collect(),
            None => vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
        };
        let ten_secs = Duration::from_secs(10);
        GuardConfig {
            statuses,
            max_replay_body: self.size(
                &name("max_replay_body"),
                g.max_replay_body.as_ref(),
                1 << 20,
                Zero::Allowed,
            ),
            eject_after: self.int(&name("eject_after"), g.eject_after.as_ref(), 3, 1, None),
            eject_window: self
                .duration(
                    &name("eject_window"),
                    g.eject_window.as_ref(),
                    ten_secs,
                    Zero::Rejected,
                )
                .unwrap_or(ten_secs),
            consecutive_connect_failures: self.int(
                &name("consecutive_connect_failures"),
                g.consecutive_connect_failures.as_ref(),
                5,
                0,
                None,
            ),
            consecutive_5xx: self.int(
                &name("consecutive_5xx"),
                g.consecutive_5xx.as_ref(),
                5,
                0,
                None,
            ),
            max_ejection_percent: self.int(
                &name("max_ejection_percent"),
                g.max_ejection_percent.as_ref(),
                50,
                0,
                Some(100),
            ),
            retry_budget_ratio: self.float(
                &name("retry_budget_ratio"),
                g.retry_budget_ratio.as_ref(),
                0.2,
                0.0..=10.0,
            ),
            retry_budget_min_per_sec: self.int(
                &name("retry_budget_min_per_sec"),
                g.retry_budget_min_per_sec.as_ref(),
                10,
                0,
                None,
            ),
            retry_budget_window: self
                .duration(
                    &name("retry_budget_window"),
                    g.retry_budget_window.as_ref(),
                    ten_secs,
                    Zero::Rejected,
                )
                .unwrap_or(ten_secs),
        }
    }

    fn upstream_tls(
        &mut self,
        pool: &str,
        node: &raw::Node<raw::UpstreamTls>,
        pool_span: Option<Range<usize>>,
    ) -> Option<UpstreamTlsConfig> {
        let t = &node.value;
        let ca_name = format!("pools.{pool}.upstream_tls.ca");
        let ca = self.file(FileKey {
            name: &ca_name,
            value: t.ca.as_ref(),
            table: node.span.clone().or(pool_span),
        });
        let server_name = t.server_name.as_ref().map(|value| {
            let name = value.get_ref();
            if !is_dns_name(name) && name.parse::<IpAddr>().is_err() {
                self.error(
                    span_of(value),
                    format!(
                        "pools.{pool}.upstream_tls.server_name \"{name}\" is not a DNS name or \
                         an IP address"
                    ),
                );
            }
            name.clone()
        });
        // An unreadable file was reported by `file`; a config with errors is never returned,
        // so `None` here only stands in until validation fails.
        let pem = std::fs::read(&ca).ok()?;
        match upstream_client_config(&pem) {
            Ok(client) => Some(UpstreamTlsConfig {
                fingerprint: tls_fingerprint(&pem, server_name.as_deref()),
                ca,
                server_name,
                client: Arc::new(client),
            }),
            Err(problem) => {
                if let Some(value) = t.ca.as_ref() {
                    self.error(
                        span_of(value),
                        format!("{ca_name} file \"{}\" {problem}", ca.display()),
                    );
                }
                None
            }
        }
    }

    fn backends(
        &mut self,
        pool: &str,
        nodes: &[raw::Node<raw::Backend>],
        pool_span: Option<Range<usize>>,
    ) -> Vec<BackendConfig> {
        if nodes.is_empty() {
            self.error(
                pool_span.clone(),
                format!(
                    "pool \"{pool}\" has no backends; add at least one [[pools.{pool}.backends]]"
                ),
            );
        }
        let mut names: HashSet<String> = HashSet::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        let mut backends = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            let span = node.span.clone().or_else(|| pool_span.clone());
            let b = &node.value;
            let label = match &b.name {
                Some(name) => {
                    let n = name.get_ref();
                    if n.is_empty() {
                        self.error(
                            span_of(name),
                            format!("backend name in pool \"{pool}\" must not be empty"),
                        );
                    } else if !is_valid_name(n) {
                        self.error(
                            span_of(name),
                            format!(
                                "backend name \"{n}\" in pool \"{pool}\" may only use letters, \
                                 digits, '_', '.' and '-'"
                            ),
                        );
                    } else if !names.insert(n.clone()) {
                        self.error(
                            span_of(name),
                            format!("duplicate backend name \"{n}\" in pool \"{pool}\""),
                        );
                    }
                    format!("backend \"{n}\"")
                }
                None => {
                    self.error(
                        span.clone(),
                        format!(
                            "backend #{} in pool \"{pool}\" has no name; set name = \"...\"",
                            index + 1
                        ),
                    );
                    format!("backend #{}", index + 1)
                }
            };
            let addr = match &b.addr {
                Some(value) => self.backend_addr(value).inspect(|addr| {
                    if let Some(other) = addrs.get(addr) {
                        self.error(
                            span_of(value),
                            format!(
                                "{label} in pool \"{pool}\" has the same address {addr} as {other}"
                            ),
                        );
                    } else {
                        addrs.insert(*addr, label.clone());
                    }
                }),
                None => {
                    self.error(
                        span.clone(),
                        format!("{label} in pool \"{pool}\" has no addr; set addr = \"IP:port\""),
                    );
                    None
                }
            };
            let weight = self.int(
                &format!("weight of {label} in pool \"{pool}\""),
                b.weight.as_ref(),
                1,
                1,
                Some(1000),
            );
            if let (Some(name), Some(addr)) = (&b.name, addr) {
                backends.push(BackendConfig {
                    name: name.get_ref().clone(),
                    addr,
                    weight,
                });
            }
        }
        backends
    }

    fn routes(
        &mut self,
        nodes: &[raw::Node<raw::Route>],
        pools: &[PoolConfig],
    ) -> Vec<RouteConfig> {
        if nodes.is_empty() {
            return match pools {
                [] => Vec::new(),
                [pool] => vec![RouteConfig {
                    host: None,
                    path_prefix: "/".to_owned(),
                    pool: pool.name.clone(),
                }],
                _ => {
                    self.error(None, "routes are required when there is more than one pool");
                    Vec::new()
                }
            };
        }
        let known = if pools.is_empty() {
            "none".to_owned()
        } else {
            pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut routes = Vec::new();
        for node in nodes {
            let r = &node.value;
            let host = r.host.as_ref().and_then(|value| {
                parse_host(value.get_ref())
                    .map_err(|message| self.error(span_of(value), message))
                    .ok()
            });
            let path_prefix = match &r.path_prefix {
                Some(value) => {
                    if !value.get_ref().starts_with('/') {
                        self.error(
                            span_of(value),
                            format!(
                                "route path_prefix \"{}\" must start with '/'",
                                value.get_ref()
                            ),
                        );
                    }
                    value.get_ref().clone()
                }
                None => "/".to_owned(),
            };
            let pool = match &r.pool {
                Some(value) => {
                    let name = value.get_ref();
                    if !pools.iter().any(|p| &p.name == name) {
                        self.error(
                            span_of(value),
                            format!(
                                "pool \"{name}\" named by route does not exist (pools: {known})"
                            ),
                        );
                    }
                    name.clone()
                }
                None => {
                    self.error(node.span.clone(), "route has no pool; set pool = \"NAME\"");
                    String::new()
                }
            };
            routes.push(RouteConfig {
                host,
                path_prefix,
                pool,
            });
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid pool with one backend, to append after the part under test.
    const POOL: &str = "[[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.1:9000\"\n";

    fn errors(text: &str) -> Vec<ConfigError> {
        match Config::parse(text, None) {
            Ok(config) => panic!("expected errors, got {config:#?}"),
            Err(e) => e.errors(),
        }
    }

    /// Asserts exactly one error, at `line:col`, whose message contains `needle`.
    #[track_caller]
    fn assert_error(text: &str, line: usize, col: usize, needle: &str) {
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
        let e = &errors[0];
        assert_eq!((e.line, e.col), (line, col), "wrong position: {e}");
        assert!(
            e.message.contains(needle),
            "{e:?} does not contain {needle:?}"
        );
    }

    /// Asserts one error for `text` followed by [`POOL`].
    #[track_caller]
    fn assert_pool_error(text: &str, line: usize, col: usize, needle: &str) {
        assert_error(&format!("{text}{POOL}"), line, col, needle);
    }

    fn ok(text: &str) -> Config {
        match Config::parse(text, None) {
            Ok(config) => config,
            Err(e) => panic!("unexpected errors:\n{e}"),
        }
    }

    /// A real PEM certificate, usable as a CA bundle.
    fn ca_pem() -> String {
        rcgen::generate_simple_self_signed(vec!["worker.internal".to_string()])
            .expect("test certificate")
            .cert
            .pem()
    }

    /// Writes a matching certificate and key under `dir`.
    fn write_pair(dir: &Path, cert: &str, key: &str) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("test certificate");
        write(dir, cert, &ck.cert.pem());
        write(dir, key, &ck.key_pair.serialize_pem());
    }

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }

    // ---- valid configs ----

    #[test]
    fn full_config_with_every_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), "certs/push.pem", "certs/push.key");
        write(dir.path(), "certs/workers-ca.pem", &ca_pem());
        write(dir.path(), "admin.token", "  s3cret\n");
        let path = write(
            dir.path(),
            "syncgate.toml",
            r#"
[server]
listen = ["127.0.0.1:8080", "[::1]:8081"]
worker_threads = 4
header_read_timeout = "5s"
request_timeout = "1m"
max_request_body = "512KiB"
max_connections = 20000
drain_timeout = "250ms"
idle_timeout = "20s"

[server.tls]
listen = ["0.0.0.0:8443"]
cert = "certs/push.pem"
key = "certs/push.key"

[admin]
listen = "0.0.0.0:9901"
token_file = "admin.token"

[pools.push]
balance = "hash"
hash_header = "X-Account-Key"
slow_start = "0s"
retries = 3

[pools.push.probe]
path = "/ready?deep=1"
interval = "2s"
timeout = "2s"
rise = 3
fall = 4
contract = "status"
max_generation_lag = 0
min_key_ratio = 1

[pools.push.guard]
statuses = [401, 403, 500]
max_replay_body = 4096
eject_after = 5
eject_window = "30s"
consecutive_connect_failures = 0
consecutive_5xx = 7
max_ejection_percent = 100
retry_budget_ratio = 0.5
retry_budget_min_per_sec = 20
retry_budget_window = "1m"

[pools.push.upstream_tls]
ca = "certs/workers-ca.pem"
server_name = "worker.internal"

[[pools.push.backends]]
name = "worker-1"
addr = "10.0.0.11:9000"
weight = 1000

[[pools.push.backends]]
name = "worker_2.b"
addr = "10.0.0.12:9000"

[pools.other]
balance = "round_robin"
backends = [{ name = "o1", addr = "10.0.1.1:80", weight = 2 }]

[[routes]]
host = "Push.Example.com:443"
path_prefix = "/v1"
pool = "push"

[[routes]]
host = "*.example.com"
pool = "other"

[[routes]]
pool = "push"
"#,
        );
        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(e) => panic!("unexpected errors:\n{e}"),
        };
        assert_eq!(config.source.as_deref(), Some(path.as_path()));

        let s = &config.server;
        assert_eq!(
            s.listen,
            vec![
                "127.0.0.1:8080".parse::<SocketAddr>().expect("addr"),
                "[::1]:8081".parse().expect("addr")
            ]
        );
        assert_eq!(s.worker_threads, 4);
        assert_eq!(s.header_read_timeout, Duration::from_secs(5));
        assert_eq!(s.request_timeout, Duration::from_secs(60));
        assert_eq!(s.max_request_body, 512 * 1024);
        assert_eq!(s.max_connections, 20_000);
        assert_eq!(s.drain_timeout, Duration::from_millis(250));
        assert_eq!(s.idle_timeout, Duration::from_secs(20));
        let tls = s.tls.as_ref().expect("tls");
        assert_eq!(
            tls.listen,
            vec!["0.0.0.0:8443".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(tls.cert, dir.path().join("certs/push.pem"));
        assert_eq!(tls.key, dir.path().join("certs/push.key"));

        assert_eq!(config.admin.listen, "0.0.0.0:9901".parse().expect("addr"));
        assert_eq!(
            config.admin.token_file,
            Some(dir.path().join("admin.token"))
        );
        assert_eq!(config.admin.token, Some(AdminToken("s3cret".to_owned())));

        let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["other", "push"], "pools are sorted by name");
        let other = &config.pools[0];
        assert_eq!(other.balance, Balance::RoundRobin);
        assert_eq!(
            other.backends,
            vec![BackendConfig {
                name: "o1".to_owned(),
                addr: "10.0.1.1:80".parse().expect("addr"),
                weight: 2,
            }]
        );
        let push = &config.pools[1];
        assert_eq!(push.balance, Balance::Hash);
        assert_eq!(push.hash_header.as_str(), "x-account-key");
        assert_eq!(push.slow_start, Duration::ZERO);
        assert_eq!(push.retries, 3);
        let probe = &push.probe;
        assert_eq!(probe.path, "/ready?deep=1");
        assert_eq!(probe.interval, Duration::from_secs(2));
        assert_eq!(probe.timeout, Duration::from_secs(2));
        assert_eq!((probe.rise, probe.fall), (3, 4));
        assert_eq!(probe.contract, Contract::Status);
        assert_eq!(probe.max_generation_lag, 0);
        assert!((probe.min_key_ratio - 1.0).abs() < f64::EPSILON);
        let guard = &push.guard;
        assert_eq!(
            guard.statuses,
            vec![
                StatusCode::UNAUTHORIZED,
                StatusCode::FORBIDDEN,
                StatusCode::INTERNAL_SERVER_ERROR
            ]
        );
        assert_eq!(guard.max_replay_body, 4096);
        assert_eq!(guard.eject_after, 5);
        assert_eq!(guard.eject_window, Duration::from_secs(30));
        assert_eq!(guard.consecutive_connect_failures, 0);
        assert_eq!(guard.consecutive_5xx, 7);
        assert_eq!(guard.max_ejection_percent, 100);
        assert!((guard.retry_budget_ratio - 0.5).abs() < f64::EPSILON);
        assert_eq!(guard.retry_budget_min_per_sec, 20);
        assert_eq!(guard.retry_budget_window, Duration::from_secs(60));
        let upstream = push.upstream_tls.as_ref().expect("upstream_tls");
        assert_eq!(upstream.ca, dir.path().join("certs/workers-ca.pem"));
        assert_eq!(upstream.server_name.as_deref(), Some("worker.internal"));
        assert_eq!(push.backends.len(), 2);
        assert_eq!(push.backends[0].name, "worker-1");
        assert_eq!(push.backends[0].weight, 1000);
        assert_eq!(push.backends[1].name, "worker_2.b");
        assert_eq!(push.backends[1].weight, 1);

        assert_eq!(config.routes.len(), 3);
        assert_eq!(
            config.routes[0].host,
            Some(HostMatch::Exact("push.example.com".to_owned()))
        );
        assert_eq!(config.routes[0].path_prefix, "/v1");
        assert_eq!(config.routes[0].pool, "push");
        assert_eq!(
            config.routes[1].host,
            Some(HostMatch::Wildcard(".example.com".to_owned()))
        );
        assert_eq!(config.routes[1].path_prefix, "/");
        assert_eq!(config.routes[1].pool, "other");
        assert_eq!(config.routes[2].host, None);
    }

    #[test]
    fn defaults_apply_and_a_single_pool_gets_a_catch_all_route() {
        let config = ok(POOL);
        assert_eq!(config.source, None);
        let s = &config.server;
        assert_eq!(
            s.listen,
            vec!["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(s.worker_threads, 0);
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.request_timeout, Duration::from_secs(30));
        assert_eq!(s.max_request_body, 8 * 1024 * 1024);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
        assert_eq!(s.idle_timeout, Duration::from_secs(75));
        assert!(s.tls.is_none());
        assert_eq!(config.admin.listen, "127.0.0.1:9901".parse().expect("addr"));
        assert_eq!(config.admin.token_file, None);
        assert_eq!(config.admin.token, None);

        assert_eq!(config.pools.len(), 1);
        let pool = &config.pools[0];
        assert_eq!(pool.name, "push");
        assert_eq!(pool.balance, Balance::P2c);
        assert_eq!(pool.hash_header, http::header::AUTHORIZATION);
        assert_eq!(pool.slow_start, Duration::from_secs(10));
        assert_eq!(pool.retries, 2);
        let probe = &pool.probe;
        assert_eq!(probe.path, "/ready");
        assert_eq!(probe.interval, Duration::from_secs(1));
        assert_eq!(probe.timeout, Duration::from_millis(500));
        assert_eq!((probe.rise, probe.fall), (2, 2));
        assert_eq!(probe.contract, Contract::KeySync);
        assert_eq!(probe.max_generation_lag, 10);
        assert!((probe.min_key_ratio - 0.98).abs() < f64::EPSILON);
        let guard = &pool.guard;
        assert_eq!(
            guard.statuses,
            vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN]
        );
        assert_eq!(guard.max_replay_body, 1024 * 1024);
        assert_eq!(guard.eject_after, 3);
        assert_eq!(guard.eject_window, Duration::from_secs(10));
        assert_eq!(guard.consecutive_connect_failures, 5);
        assert_eq!(guard.consecutive_5xx, 5);
        assert_eq!(guard.max_ejection_percent, 50);
        assert!((guard.retry_budget_ratio - 0.2).abs() < f64::EPSILON);
        assert_eq!(guard.retry_budget_min_per_sec, 10);
        assert_eq!(guard.retry_budget_window, Duration::from_secs(10));
        assert!(pool.upstream_tls.is_none());
        assert_eq!(
            pool.backends,
            vec![BackendConfig {
                name: "w1".to_owned(),
                addr: "10.0.0.1:9000".parse().expect("addr"),
                weight: 1,
            }]
        );

        assert_eq!(config.routes.len(), 1);
        let route = &config.routes[0];
        assert_eq!(route.host, None);
        assert_eq!(route.path_prefix, "/");
        assert_eq!(route.pool, "push");
    }

    #[test]
    fn implied_tables_and_dotted_keys_are_accepted() {
        let config = ok("[server]\nlisten = [\"127.0.0.1:1\"]\n\
             [pools]\npush.retries = 0\npush.backends = [{name = \"a\", addr = \"10.0.0.1:1\"}]\n");
        assert_eq!(config.pools[0].retries, 0);
        assert_eq!(config.pools[0].backends.len(), 1);
        // An implied [server.tls] still reports its missing keys (at the table's first key).
        let errors = errors("[server]\ntls.listen = [\"127.0.0.1:8443\"]\n");
        assert!(errors
            .iter()
            .any(|e| e.message.contains("server.tls.cert is required")));
    }

    #[test]
    fn tls_listeners_alone_are_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), "c.pem", "k.pem");
        let path = write(
            dir.path(),
            "a.toml",
            &format!(
                "[server]\nlisten = []\n[server.tls]\nlisten = [\"127.0.0.1:8443\"]\n\
                 cert = \"c.pem\"\nkey = \"k.pem\"\n{POOL}"
            ),
        );
        let config = Config::load(&path).expect("valid");
        assert!(config.server.listen.is_empty());
        assert_eq!(config.server.tls.expect("tls").listen.len(), 1);
    }

    // ---- syntax and serde errors ----

    #[test]
    fn toml_syntax_error_has_position() {
        let missing_comma = errors("[server]\nlisten = [\"127.0.0.1:8080\" \"127.0.0.1:8081\"]\n");
        assert_eq!(missing_comma.len(), 1, "{missing_comma:?}");
        let e = &missing_comma[0];
        assert_eq!((e.line, e.col), (2, 28), "{e}");
        assert_eq!(e.message, "invalid array; expected `]`");
        let unclosed = errors("[server\nlisten = []\n");
        assert_eq!(unclosed.len(), 1, "{unclosed:?}");
        let e = &unclosed[0];
        assert_eq!((e.line, e.col), (1, 8), "{e}");
        assert_eq!(e.file, "<config>");
    }

    #[test]
    fn unknown_key_has_position() {
        assert_error(
            "[server]\nlisten = []\n\n[pools.push.probe]\npath = \"/ready\"\nintervall = \"1s\"\n",
            6,
            1,
            "unknown field `intervall`",
        );
        assert_error("colour = 1\n", 1, 1, "unknown field `colour`");
    }

    #[test]
    fn wrong_type_has_position() {
        assert_pool_error("[server]\nworker_threads = \"4\"\n", 2, 18, "invalid type");
        assert_pool_error("[server]\nrequest_timeout = 30\n", 2, 19, "invalid type");
    }

    // ---- [server] ----

    #[test]
    fn bad_listen_address() {
        assert_pool_error(
            "[server]\nlisten = [\"127.0.0.1:80\", \"nope\"]\n",
            2,
            27,
            "server.listen address \"nope\" is not IP:port",
        );
    }

    #[test]
    fn no_listener_at_all() {
        assert_pool_error("[server]\nlisten = []\n", 2, 10, "at least one listener");
    }

    #[test]
    fn zero_timeouts() {
        assert_pool_error(
            "[server]\nrequest_timeout = \"0s\"\n",
            2,
            19,
            "server.request_timeout must be greater than 0",
        );
        assert_pool_error(
            "[server]\nheader_read_timeout = \"0ms\"\n",
            2,
            23,
            "server.header_read_timeout must be greater than 0",
        );
        assert_pool_error(
            "[server]\ndrain_timeout = \"0s\"\n",
            2,
            17,
            "server.drain_timeout must be greater than 0",
        );
    }

    #[test]
    fn bad_duration() {
        assert_pool_error(
            "[server]\ndrain_timeout = \"5 parsecs\"\n",
            2,
            17,
            "server.drain_timeout \"5 parsecs\" is not a duration",
        );
        assert_pool_error(
            "[server]\ndrain_timeout = \"30\"\n",
            2,
            17,
            "is not a duration",
        );
    }

    #[test]
    fn bad_sizes() {
        assert_pool_error(
            "[server]\nmax_request_body = \"8XB\"\n",
            2,
            20,
            "server.max_request_body \"8XB\" is not a size (unknown unit \"XB\")",
        );
        assert_pool_error(
            "[server]\nmax_request_body = 0\n",
            2,
            20,
            "server.max_request_body must be greater than 0",
        );
        assert_pool_error(
            "[server]\nmax_request_body = -5\n",
            2,
            20,
            "server.max_request_body must not be negative",
        );
    }

    #[test]
    fn bad_connection_and_thread_counts() {
        assert_pool_error(
            "[server]\nmax_connections = 0\n",
            2,
            19,
            "server.max_connections must be at least 1 (got 0)",
        );
        assert_pool_error(
            "[server]\nworker_threads = 2000\n",
            2,
            18,
            "server.worker_threads must be at most 1024 (got 2000)",
        );
    }

    #[test]
    fn tls_requires_listen_cert_and_key() {
        let text = format!("[server.tls]\nlisten = []\n{POOL}");
        let all = errors(&text);
        let found: Vec<_> = all
            .iter()
            .map(|e| (e.line, e.col, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, 1, "server.tls.cert is required"),
                (1, 1, "server.tls.key is required"),
                (2, 10, "server.tls.listen must name at least one address"),
            ]
        );
        let no_listen = errors(&format!("[server.tls]\ncert = \"c\"\nkey = \"k\"\n{POOL}"));
        let e = &no_listen[0];
        assert_eq!((e.line, e.col), (1, 1), "{e}");
        assert!(e.message.contains("server.tls.listen is required"), "{e}");
    }

    #[test]
    fn tls_files_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "c.pem", "c");
        let path = write(
            dir.path(),
            "a.toml",
            &format!(
                "[server.tls]\nlisten = [\"0.0.0.0:8443\"]\ncert = \"c.pem\"\nkey = \"missing.key\"\n{POOL}"
            ),
        );
        let errors = Config::load(&path).expect_err("invalid").errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.line, e.col), (4, 7));
        assert_eq!(e.file, path.display().to_string());
        assert!(e.message.starts_with("server.tls.key file \""), "{e}");
        assert!(e.message.contains("missing.key\" cannot be read"), "{e}");
    }

    #[test]
    fn tls_pair_must_parse_and_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "[server.tls]\nlisten = [\"0.0.0.0:8443\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{POOL}"
        );
        let path = write(dir.path(), "a.toml", &toml);
        let only_error = || {
            let errors = Config::load(&path).expect_err("invalid").errors();
            assert_eq!(errors.len(), 1, "{errors:?}");
            errors.into_iter().next().expect("one error")
        };
        // Not PEM at all: reported at `cert`.
        write(dir.path(), "c.pem", "c");
        write_pair(dir.path(), "other.pem", "k.pem");
        let e = only_error();
        assert_eq!((e.line, e.col), (3, 8), "{e:?}");
        assert!(e.message.contains("no PEM certificate"), "{e:?}");
        // Both parse, but the key belongs to another certificate: reported at `key`.
        write_pair(dir.path(), "c.pem", "unused.key");
        let e = only_error();
        assert_eq!((e.line, e.col), (4, 7), "{e:?}");
        assert!(
            e.message.contains("does not match the certificate"),
            "{e:?}"
        );
        // A matching pair loads.
        write_pair(dir.path(), "c.pem", "k.pem");
        assert!(Config::load(&path).is_ok());
    }

    #[test]
    fn duplicate_listener_address() {
        assert_pool_error(
            "[server]\nlisten = [\"127.0.0.1:9901\"]\n",
            2,
            11,
            "server.listen address 127.0.0.1:9901 is already used by admin.listen",
        );
        // Port 0 (an ephemeral port each) may repeat.
        ok(&format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{POOL}"
        ));
    }

    // ---- [admin] ----

    #[test]
    fn admin_bad_address() {
        assert_pool_error(
            "[admin]\nlisten = \"localhost:9901\"\n",
            2,
            10,
            "admin.listen address \"localhost:9901\" is not IP:port",
        );
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        assert_pool_error(
            "[admin]\nlisten = \"0.0.0.0:9901\"\n",
            2,
            10,
            "admin.listen 0.0.0.0:9901 is not loopback; set admin.token_file",
        );
        let config = ok(&format!("[admin]\nlisten = \"[::1]:9901\"\n{POOL}"));
        assert!(config.admin.listen.ip().is_loopback());
    }

    #[test]
    fn admin_token_file_unreadable_or_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "empty.token", " \n\t\n");
        let path = write(
            dir.path(),
            "a.toml",
            &format!("[admin]\ntoken_file = \"empty.token\"\n{POOL}"),
        );
        let errors = Config::load(&path).expect_err("invalid").errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].col), (2, 14));
        assert!(
            errors[0].message.contains("empty.token\" is empty"),
            "{}",
            errors[0]
        );

        let path = write(
            dir.path(),
            "b.toml",
            &format!("[admin]\ntoken_file = \"nope.token\"\n{POOL}"),
        );
        let errors = Config::load(&path).expect_err("invalid").errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].col), (2, 14));
        assert!(
            errors[0].message.contains("nope.token\" cannot be read"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn admin_token_is_redacted_in_debug() {
        let token = AdminToken("hunter2".to_owned());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }

    // ---- pools and backends ----

    #[test]
    fn at_least_one_pool() {
        assert_error(
            "[server]\nworker_threads = 1\n",
            1,
            1,
            "no pools are configured",
        );
    }

    #[test]
    fn bad_pool_names() {
        assert_error(
            "[pools.\"a b\"]\nbackends = [{name = \"w\", addr = \"10.0.0.1:1\"}]\n",
            1,
            8,
            "pool name \"a b\" may only use letters, digits",
        );
        assert_error(
            "[pools.\"\"]\nbackends = [{name = \"w\", addr = \"10.0.0.1:1\"}]\n",
            1,
            8,
            "pool name must not be empty",
        );
    }

    #[test]
    fn pool_without_backends() {
        assert_error(
            "[pools.push]\nretries = 1\n",
            1,
            8,
            "pool \"push\" has no backends",
        );
        assert_error(
            "[pools.push]\nbackends = []\n",
            1,
            8,
            "pool \"push\" has no backends",
        );
    }

    #[test]
    fn backend_address_is_ip_or_host_and_port() {
        assert_error(
            "[[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.1\"\n",
            3,
            8,
            "backend address \"10.0.0.1\" is not IP:port",
        );
        assert_error(
            "[[pools.push.backends]]\nname = \"w1\"\naddr = \"bad host:9000\"\n",
            3,
            8,
            "backend address \"bad host:9000\" is not IP:port or host:port",
        );
        // A host name is resolved at load (from /etc/hosts here: no network needed), IPv4
        // first.
        let config = ok("[[pools.push.backends]]\nname = \"w1\"\naddr = \"localhost:9000\"\n");
        assert_eq!(
            config.pools[0].backends[0].addr,
            "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn backend_name_and_addr_are_required() {
        assert_error(
            "[[pools.push.backends]]\naddr = \"10.0.0.1:1\"\n",
            1,
            1,
            "backend #1 in pool \"push\" has no name",
        );
        assert_error(
            "[[pools.push.backends]]\nname = \"w1\"\n",
            1,
            1,
            "backend \"w1\" in pool \"push\" has no addr",
        );
    }

    #[test]
    fn duplicate_backend_name() {
        assert_error(
            &format!("{POOL}[[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.2:9000\"\n"),
            5,
            8,
            "duplicate backend name \"w1\" in pool \"push\"",
        );
    }

    #[test]
    fn bad_backend_names() {
        assert_error(
            "[[pools.push.backends]]\nname = \"w/1\"\naddr = \"10.0.0.1:1\"\n",
            2,
            8,
            "backend name \"w/1\" in pool \"push\" may only use",
        );
        assert_error(
            "[[pools.push.backends]]\nname = \"\"\naddr = \"10.0.0.1:1\"\n",
            2,
            8,
            "backend name in pool \"push\" must not be empty",
        );
    }

    #[test]
    fn duplicate_backend_address() {
        assert_error(
            &format!("{POOL}[[pools.push.backends]]\nname = \"w2\"\naddr = \"10.0.0.1:9000\"\n"),
            6,
            8,
            "backend \"w2\" in pool \"push\" has the same address 10.0.0.1:9000 as backend \"w1\"",
        );
    }

    #[test]
    fn backend_weight_range() {
        for (weight, col) in [("0", 10), ("1001", 10), ("-1", 10)] {
            assert_error(
                &format!("{POOL}weight = {weight}\n"),
                4,
                col,
                "weight of backend \"w1\" in pool \"push\" must be between 1 and 1000",
            );
        }
    }

    #[test]
    fn hash_header_must_be_a_header_name() {
        assert_pool_error(
            "[pools.push]\nhash_header = \"x account\"\n",
            2,
            15,
            "pools.push.hash_header \"x account\" is not a valid HTTP header name",
        );
    }

    #[test]
    fn balance_and_contract_must_be_known() {
        assert_pool_error(
            "[pools.push]\nbalance = \"random\"\n",
            2,
            11,
            "pools.push.balance \"random\" is not one of \"p2c\", \"round_robin\", \"hash\"",
        );
        assert_pool_error(
            "[pools.push.probe]\ncontract = \"json\"\n",
            2,
            12,
            "pools.push.probe.contract \"json\" is not one of \"key-sync\", \"status\"",
        );
    }

    #[test]
    fn rise_and_fall_at_least_one() {
        assert_pool_error(
            "[pools.push.probe]\nrise = 0\n",
            2,
            8,
            "probe.rise must be at least 1",
        );
        assert_pool_error(
            "[pools.push.probe]\nfall = 0\n",
            2,
            8,
            "pools.push.probe.fall must be at least 1 (got 0)",
        );
    }

    #[test]
    fn min_key_ratio_range() {
        assert_pool_error(
            "[pools.push.probe]\nmin_key_ratio = 1.5\n",
            2,
            17,
            "pools.push.probe.min_key_ratio must be between 0 and 1 (got 1.5)",
        );
        assert_pool_error(
            "[pools.push.probe]\nmin_key_ratio = nan\n",
            2,
            17,
            "between 0 and 1",
        );
    }

    #[test]
    fn probe_path_must_start_with_slash() {
        assert_pool_error(
            "[pools.push.probe]\npath = \"ready\"\n",
            2,
            8,
            "pools.push.probe.path \"ready\" must start with '/'",
        );
        assert_pool_error(
            "[pools.push.probe]\npath = \"/re ady\"\n",
            2,
            8,
            "is not a valid URI path",
        );
    }

    #[test]
    fn probe_interval_and_timeout() {
        assert_pool_error(
            "[pools.push.probe]\ninterval = \"0s\"\n",
            2,
            12,
            "pools.push.probe.interval must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.probe]\ntimeout = \"0s\"\n",
            2,
            11,
            "pools.push.probe.timeout must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.probe]\ninterval = \"1s\"\ntimeout = \"1500ms\"\n",
            3,
            11,
            "pools.push.probe.timeout (1s 500ms) must not exceed probe.interval (1s)",
        );
        // Only a short interval: the unset timeout follows it down.
        let probe =
            &ok(&format!("[pools.push.probe]\ninterval = \"100ms\"\n{POOL}")).pools[0].probe;
        assert_eq!(probe.timeout, Duration::from_millis(100));
        // Only a long timeout: it exceeds the default interval.
        assert_pool_error(
            "[pools.push.probe]\ntimeout = \"2s\"\n",
            2,
            11,
            "pools.push.probe.timeout (2s) must not exceed probe.interval (1s)",
        );
    }

    #[test]
    fn guard_statuses_range() {
        let errors = errors(&format!(
            "[pools.push.guard]\nstatuses = [99, 401, 600]\n{POOL}"
        ));
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.line, e.col, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    2,
                    13,
                    "pools.push.guard.statuses entry 99 is not an HTTP status (100 to 599)"
                ),
                (
                    2,
                    22,
                    "pools.push.guard.statuses entry 600 is not an HTTP status (100 to 599)"
                ),
            ]
        );
    }

    #[test]
    fn guard_limits() {
        assert_pool_error(
            "[pools.push.guard]\neject_after = 0\n",
            2,
            15,
            "pools.push.guard.eject_after must be at least 1 (got 0)",
        );
        assert_pool_error(
            "[pools.push.guard]\nmax_ejection_percent = 101\n",
            2,
            24,
            "pools.push.guard.max_ejection_percent must be at most 100 (got 101)",
        );
        assert_pool_error(
            "[pools.push.guard]\nretry_budget_ratio = 10.5\n",
            2,
            22,
            "pools.push.guard.retry_budget_ratio must be between 0 and 10 (got 10.5)",
        );
        assert_pool_error(
            "[pools.push.guard]\nretry_budget_ratio = -0.1\n",
            2,
            22,
            "between 0 and 10",
        );
        assert_pool_error(
            "[pools.push.guard]\neject_window = \"0s\"\n",
            2,
            16,
            "pools.push.guard.eject_window must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.guard]\nretry_budget_window = \"0s\"\n",
            2,
            23,
            "pools.push.guard.retry_budget_window must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.guard]\nconsecutive_5xx = -1\n",
            2,
            19,
            "pools.push.guard.consecutive_5xx must not be negative (got -1)",
        );
        assert_pool_error(
            "[pools.push.guard]\nmax_replay_body = \"1.5\"\n",
            2,
            19,
            "the unit is missing",
        );
    }

    #[test]
    fn upstream_tls_needs_a_readable_ca() {
        assert_pool_error(
            "[pools.push.upstream_tls]\nserver_name = \"worker.internal\"\n",
            1,
            1,
            "pools.push.upstream_tls.ca is required",
        );
        assert_pool_error(
            "[pools.push.upstream_tls]\nca = \"/nonexistent/ca.pem\"\n",
            2,
            6,
            "pools.push.upstream_tls.ca file \"/nonexistent/ca.pem\" cannot be read",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write(dir.path(), "ca.pem", &ca_pem());
        assert_pool_error(
            &format!(
                "[pools.push.upstream_tls]\nca = \"{}\"\nserver_name = \"a b\"\n",
                ca.display()
            ),
            3,
            15,
            "server_name \"a b\" is not a DNS name or an IP address",
        );
        assert_pool_error(
            &format!(
                "[pools.push.upstream_tls]\nca = \"{}\"\n",
                dir.path().display()
            ),
            2,
            6,
            "is a directory",
        );
        let junk = write(dir.path(), "junk.pem", "not a certificate");
        assert_pool_error(
            &format!("[pools.push.upstream_tls]\nca = \"{}\"\n", junk.display()),
            2,
            6,
            "holds no PEM certificate",
        );
    }

    // ---- routes ----

    #[test]
    fn route_to_unknown_pool() {
        assert_error(
            &format!("{POOL}\n[[routes]]\npool = \"pushh\"\n"),
            6,
            8,
            "pool \"pushh\" named by route does not exist (pools: push)",
        );
    }

    #[test]
    fn route_without_pool() {
        assert_error(
            &format!("{POOL}\n[[routes]]\npath_prefix = \"/\"\n"),
            5,
            1,
            "route has no pool",
        );
    }

    #[test]
    fn route_hosts() {
        for host in ["*", "a.*.b", "*.", "**.example.com", "*example.com"] {
            assert_error(
                &format!("{POOL}[[routes]]\nhost = \"{host}\"\npool = \"push\"\n"),
                5,
                8,
                "a wildcard is only allowed as a leading \"*.\"",
            );
        }
        for host in ["a b", "", "example..com", "[::1", "host:port"] {
            assert_error(
                &format!("{POOL}[[routes]]\nhost = \"{host}\"\npool = \"push\"\n"),
                5,
                8,
                "route host",
            );
        }
        let cases = [
            (
                "Push.Example.COM",
                HostMatch::Exact("push.example.com".to_owned()),
            ),
            (
                "push.example.com:8443",
                HostMatch::Exact("push.example.com".to_owned()),
            ),
            (
                "*.Example.com:443",
                HostMatch::Wildcard(".example.com".to_owned()),
            ),
            ("[::1]:8080", HostMatch::Exact("[::1]".to_owned())),
            ("10.0.0.1", HostMatch::Exact("10.0.0.1".to_owned())),
        ];
        for (host, expected) in cases {
            let config = ok(&format!(
                "{POOL}[[routes]]\nhost = \"{host}\"\npool = \"push\"\n"
            ));
            assert_eq!(config.routes[0].host, Some(expected), "{host}");
        }
    }

    #[test]
    fn route_path_prefix_must_start_with_slash() {
        assert_error(
            &format!("{POOL}[[routes]]\npath_prefix = \"api\"\npool = \"push\"\n"),
            5,
            15,
            "route path_prefix \"api\" must start with '/'",
        );
    }

    #[test]
    fn several_pools_need_routes() {
        assert_error(
            &format!("{POOL}[pools.other]\nbackends = [{{name = \"o\", addr = \"10.0.0.2:1\"}}]\n"),
            1,
            1,
            "routes are required when there is more than one pool",
        );
    }

    // ---- several errors, paths, display ----

    #[test]
    fn every_validation_error_is_reported() {
        let text = "\
[pools.push.probe]
rise = 0

[[pools.push.backends]]
name = \"w1\"
addr = \"10.0.0.1\"

[[routes]]
pool = \"pushh\"
";
        let errors = errors(text);
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(found, vec![(2, 8), (6, 8), (9, 8)], "{errors:#?}");
        assert!(errors[0].message.contains("probe.rise must be at least 1"));
        assert!(errors[1]
            .message
            .contains("backend address \"10.0.0.1\" is not IP:port"));
        assert!(errors[2]
            .message
            .contains("pool \"pushh\" named by route does not exist"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), "etc/tls/c.pem", "etc/tls/k.pem");
        write(dir.path(), "etc/token", "t0ken");
        write(dir.path(), "etc/ca.pem", &ca_pem());
        let path = write(
            dir.path(),
            "etc/syncgate.toml",
            "[server.tls]\nlisten = [\"127.0.0.1:8443\"]\ncert = \"tls/c.pem\"\nkey = \"tls/k.pem\"\n\
             [admin]\ntoken_file = \"token\"\n\
             [pools.push.upstream_tls]\nca = \"./ca.pem\"\n\
             [[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.1:9000\"\n",
        );
        let config = Config::load(&path).expect("valid");
        let etc = dir.path().join("etc");
        let tls = config.server.tls.expect("tls");
        assert_eq!(tls.cert, etc.join("tls/c.pem"));
        assert_eq!(tls.key, etc.join("tls/k.pem"));
        assert_eq!(config.admin.token_file, Some(etc.join("token")));
        assert_eq!(config.admin.token, Some(AdminToken("t0ken".to_owned())));
        let ca = &config.pools[0]
            .upstream_tls
            .as_ref()
            .expect("upstream_tls")
            .ca;
        assert_eq!(ca, &etc.join("./ca.pem"));
    }

    #[test]
    fn columns_count_characters() {
        let errors = errors(&format!(
            "# ünïcödé\n[server]\nlisten = [\"ä\", \"ö\"]\n{POOL}"
        ));
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.col)).collect();
        assert_eq!(found, vec![(3, 11), (3, 16)], "{errors:#?}");
        assert!(errors[0]
            .message
            .contains("server.listen address \"ä\" is not IP:port"));
    }

    #[test]
    fn io_errors_and_display() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).expect_err("missing file");
        assert!(matches!(err, LoadError::Io { .. }));
        let errors = err.errors();
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].line, errors[0].col), (1, 1));
        assert_eq!(errors[0].file, missing.display().to_string());
        assert!(err
            .to_string()
            .starts_with(&format!("{}: ", missing.display())));

        let err =
            Config::parse("[pools.p]\n", Some(Path::new("/etc/sg.toml"))).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "/etc/sg.toml:1:8: pool \"p\" has no backends; add at least one [[pools.p.backends]]"
        );
        let err = Config::parse("[pools.p]\nbackends = [{}]\n", None).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "<config>:2:13: backend #1 in pool \"p\" has no name; set name = \"...\"\n\
             <config>:2:13: backend #1 in pool \"p\" has no addr; set addr = \"IP:port\""
        );
    }

    #[test]
    fn sizes() {
        let cases = [
            ("100B", 100),
            ("0B", 0),
            ("1KB", 1_000),
            ("1MB", 1_000_000),
            ("2GB", 2_000_000_000),
            ("512KiB", 512 * 1024),
            ("8MiB", 8 << 20),
            ("1GiB", 1 << 30),
            ("8 MiB", 8 << 20),
            ("1.5KiB", 1536),
            ("1.50MB", 1_500_000),
            ("0.5KiB", 512),
            ("8mib", 8 << 20),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for text in [
            "",
            "MiB",
            "8",
            "8XB",
            "-1B",
            "1.B",
            ".5KiB",
            "1.2.3MB",
            "0.3B",
            " 8MiB",
            "8MiB ",
            "99999999999GiB",
        ] {
            assert!(parse_size(text).is_err(), "{text:?} should not parse");
        }
        let config = ok(&format!(
            "[server]\nmax_request_body = 1234\n[pools.push.guard]\nmax_replay_body = \"0B\"\n{POOL}"
        ));
        assert_eq!(config.server.max_request_body, 1234);
        assert_eq!(config.pools[0].guard.max_replay_body, 0);
    }

    #[test]
    fn durations() {
        let config = ok(&format!(
            "[server]\nrequest_timeout = \"1m\"\nheader_read_timeout = \"250ms\"\n\
             drain_timeout = \"1h 30m\"\n[pools.push]\nslow_start = \"1.5s\"\n{POOL}"
        ));
        assert_eq!(config.server.request_timeout, Duration::from_secs(60));
        assert_eq!(
            config.server.header_read_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(config.server.drain_timeout, Duration::from_secs(5400));
        assert_eq!(config.pools[0].slow_start, Duration::from_millis(1500));
    }
}
