//! Configuration: raw TOML types → validated [`Config`].
//!
//! Three layers keep untrusted input away from the request path:
//! 1. `raw` serde types mirror the TOML file exactly (`deny_unknown_fields`, spans kept);
//! 2. [`Config`] is the validated, typed form (addresses parsed, durations and sizes converted,
//!    cross references checked); validation reports *every* error at once with file:line:col;
//! 3. [`crate::snapshot::Snapshot`] is the runtime form built from a `Config`.
//!
//! Raw types never leave this module. Files: this one holds the validated model and its errors;
//! `limits.rs` the range of every value (and the file size limits); `raw.rs` the serde mirror;
//! `syntax.rs` the value syntax (sizes, route hosts, names); `validate/` the [`Config`] builder,
//! one file per section.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};

use validate::Validator;

pub(crate) mod limits;
#[cfg(test)]
mod proptests;
mod raw;
mod syntax;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
mod validate;

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
    /// Proxy worker threads; 0 means one per core. Default 0; at most 1024.
    pub worker_threads: usize,
    /// A request head must be complete this long after its first byte, and a new connection
    /// must send its first byte (after its TLS handshake, bounded alike) within it; not applied
    /// between keep-alive requests. Default 10 s; 1 ms to 24 h.
    pub header_read_timeout: Duration,
    /// Deadline for the whole upstream exchange (until response headers), and the longest wait
    /// between two reads of the response body. Default 30 s; 1 ms to 24 h. The exchange's
    /// deadline is met up to 50 ms late (`crate::deadline::TICK`).
    pub request_timeout: Duration,
    /// Larger request bodies are answered 413. Bytes; default 8 MiB; 1 B to 1 TiB.
    pub max_request_body: u64,
    /// Client connections at once, across proxy threads. At the limit the connection idle
    /// longest is closed gracefully to admit a new one; with none idle, new ones wait. Default
    /// 10000; 1 to 1,000,000.
    pub max_connections: usize,
    /// Graceful shutdown deadline, and how long removed backends may drain. Default 30 s; 1 ms
    /// to 24 h.
    pub drain_timeout: Duration,
    /// A client connection with no request in progress (a request is in progress until its
    /// response body has been sent) for this long is closed gracefully: HTTP/2 `GOAWAY`,
    /// HTTP/1.1 close. Default 75 s, nginx's `keepalive_timeout`; 1 ms to 24 h.
    pub idle_timeout: Duration,
    /// `[server.access_log]`: one line per proxied request.
    pub access_log: AccessLogConfig,
    /// `[server.tls]`, optional HTTPS listeners.
    pub tls: Option<TlsConfig>,
}

/// `[server.access_log]`: one line per proxied request, written once its response has been
/// sent or its client went away (the README's "Access log" lists the fields). A reload applies
/// every key to the requests that complete after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Whether lines are written. Default true.
    pub enabled: bool,
    /// Where lines go: `path = "-"` (the default) is stderr; any other path is a file, resolved
    /// against the config file's directory, opened for append (created with mode 0640 if
    /// absent) and reopened on `SIGUSR1` (logrotate). Its directory must exist, and an existing
    /// file must be a regular file.
    pub target: AccessLogTarget,
    /// Line format. Default `text`.
    pub format: AccessLogFormat,
}

/// Where the access log writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// `"-"`: the process's stderr, beside syncgate's own log.
    Stderr,
    /// A file, by its resolved path.
    File(PathBuf),
}

/// How an access log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Space-separated, like nginx's `combined` format, with `key=value` optional fields.
    Text,
    /// One flat JSON object per line.
    Json,
}

impl AccessLogFormat {
    /// Every format, in the order error messages list them.
    pub const ALL: [AccessLogFormat; 2] = [AccessLogFormat::Text, AccessLogFormat::Json];

    /// The spelling in the config file: `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLogFormat::Text => "text",
            AccessLogFormat::Json => "json",
        }
    }
}

impl fmt::Display for AccessLogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Host names (lower-case, without port) that an operator action's `Host` header may name
    /// besides an IP address and `localhost`, e.g. the name of a reverse proxy in front of the
    /// admin endpoint. Default empty. (A `Host` naming anything else could be a DNS rebinding
    /// attack, and is refused.)
    pub allowed_hosts: Vec<String>,
}

/// A secret admin bearer token; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl Balance {
    /// Every algorithm, in the order error messages list them.
    pub const ALL: [Balance; 3] = [Balance::P2c, Balance::RoundRobin, Balance::Hash];

    /// The spelling in the config file: `p2c`, `round_robin` or `hash`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::P2c => "p2c",
            Balance::RoundRobin => "round_robin",
            Balance::Hash => "hash",
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Contract {
    /// Every contract, in the order error messages list them.
    pub const ALL: [Contract; 2] = [Contract::KeySync, Contract::Status];

    /// The spelling in the config file: `key-sync` or `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::KeySync => "key-sync",
            Contract::Status => "status",
        }
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// A newly admitted backend's weight ramps up linearly over this. Default 10 s; 0 disables;
    /// at most 24 h.
    pub slow_start: Duration,
    /// Other backends tried after a connect failure. Default 2; at most 100.
    pub retries: u32,
    /// `[pools.NAME.probe]`.
    pub probe: ProbeConfig,
    /// `[pools.NAME.guard]`.
    pub guard: GuardConfig,
    /// `[pools.NAME.upstream_tls]`, optional TLS to the workers.
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// `[[pools.NAME.backends]]`, in file order. At least one, unless the pool has a
    /// `discover` source.
    pub backends: Vec<BackendConfig>,
    /// `[[pools.NAME.discover]]`, in file order: backends found through DNS.
    pub discover: Vec<DiscoverConfig>,
}

/// `[[pools.NAME.discover]]`: a DNS name whose answers are backends of the pool, re-resolved
/// every `interval` (see `crate::discover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverConfig {
    /// Unique among the pool's sources, never `static`; the prefix of the names of the backends
    /// it finds. Default: the DNS name asked (without port or trailing dot, lower-cased).
    pub name: String,
    /// What is asked.
    pub query: DiscoverQuery,
    /// Time between two resolutions; a shorter record TTL does not shorten it. Default 5 s, at
    /// least 100 ms.
    pub interval: Duration,
    /// The DNS server asked (UDP, TCP when an answer is truncated). None (the default): the
    /// system's resolver configuration (`/etc/resolv.conf`, and `/etc/hosts`).
    pub resolver: Option<SocketAddr>,
    /// Weight of every backend found, 1..=1000. None (the default): 1 for `dns`, each SRV
    /// record's own weight for `srv` (0 counted as 1, capped at 1000).
    pub weight: Option<u32>,
}

/// What a discover source asks its resolver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoverQuery {
    /// `dns = "host:port"`: the A and AAAA records of `host`, every address a backend on `port`.
    Dns {
        /// The name asked, as written (a trailing dot makes it absolute: no search domains).
        host: String,
        /// The port of every backend found.
        port: u16,
    },
    /// `srv = "_service._proto.name"`: the SRV records of the name; every address of every
    /// target is a backend on the record's port.
    Srv {
        /// The name asked, as written.
        name: String,
    },
}

impl DiscoverQuery {
    /// `dns` or `srv`, as the config key and the admin API spell the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoverQuery::Dns { .. } => "dns",
            DiscoverQuery::Srv { .. } => "srv",
        }
    }

    /// The value of the config key: `host:port` or the SRV name.
    pub fn target(&self) -> String {
        match self {
            DiscoverQuery::Dns { host, port } => format!("{host}:{port}"),
            DiscoverQuery::Srv { name } => name.clone(),
        }
    }
}

/// `[pools.NAME.probe]`: the readiness probe.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Probe path, must start with `/`. Default `/ready`.
    pub path: String,
    /// Time between probes. Default 1 s; 10 ms to 1 h.
    pub interval: Duration,
    /// A probe slower than this fails. Default 500 ms (whatever the interval); 1 ms to 1 h.
    /// It may exceed `interval`: probes of one backend never overlap, the next starts at the
    /// later of `interval` after the previous start and the previous one's end.
    pub timeout: Duration,
    /// Consecutive passes that admit a backend. Default 2; 1 to 1000.
    pub rise: u32,
    /// Consecutive failures that eject a ready backend. Default 2; 1 to 1000.
    pub fall: u32,
    /// Default `key-sync`.
    pub contract: Contract,
    /// Generations a backend may lag the newest ready peer. Default 10; at most `u32::MAX`.
    pub max_generation_lag: u64,
    /// Minimum share of the ready peers' median key count. Default 0.98, in [0, 1].
    pub min_key_ratio: f64,
}

/// `[pools.NAME.guard]`: the response guard and passive outlier detection.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Statuses that need a second opinion. Default `[401, 403]`.
    pub statuses: Vec<StatusCode>,
    /// Request bodies up to this size are kept for a replay. Bytes; default 1 MiB; at most
    /// 1 GiB.
    pub max_replay_body: u64,
    /// Contradictions within `eject_window` that eject a backend at once. Default 3; 1 to 1000.
    pub eject_after: u32,
    /// Window for `eject_after`. Default 10 s; 1 ms to 24 h.
    pub eject_window: Duration,
    /// Consecutive connect failures that eject a backend. Default 5; 0 disables; at most
    /// 1,000,000.
    pub consecutive_connect_failures: u32,
    /// Consecutive 5xx answers that eject a backend. Default 0 (off); at most 1,000,000. Off
    /// by default: a backend whose probes pass but whose answers fail is the peer that turns
    /// another's unconfirmed 401 into a 503; ejecting it can leave that other one the pool's
    /// only ready backend, whose 401s then pass unasked (DESIGN.md ejects on probes,
    /// contradictions and connect failures only).
    pub consecutive_5xx: u32,
    /// Passive ejection never takes out more than this share (percent) of the pool's ready and
    /// ejected backends, and never the last ready one. Default 50.
    pub max_ejection_percent: u32,
    /// Replays and retries may add at most this share of the pool's requests. Default 0.2.
    pub retry_budget_ratio: f64,
    /// Retries always allowed per second regardless of the ratio. Default 10; at most
    /// 1,000,000.
    pub retry_budget_min_per_sec: u32,
    /// Window over which the retry budget is measured. Default 10 s; 1 s to 1 min.
    pub retry_budget_window: Duration,
    /// The guard's memories of credentials: `credential`, `remember_*`, `accepted_*`.
    pub memory: MemoryConfig,
}

/// Where a request carries its account key: one `credential` entry of `[pools.NAME.guard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `header:NAME`: the header's value (the first one, if repeated), as sent.
    Header(HeaderName),
    /// `query:NAME`: the query parameter's value (the first one, if repeated), percent-decoded.
    Query(String),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Header(name) => write!(f, "header:{name}"),
            CredentialSource::Query(name) => write!(f, "query:{name}"),
        }
    }
}

/// The guard's two bounded memories of credential fingerprints (keyed hashes, never the key):
/// confirmed guarded answers, which later pass without a second opinion, and credentials
/// answered 2xx, whose guarded answers at the same key-set generation are refused with `503`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Where a request carries its account key, tried in order; the first present is the
    /// request's credential. Default `["header:authorization", "query:api_key"]`; empty: no
    /// request has a credential and both memories stay unused.
    pub credential: Vec<CredentialSource>,
    /// How long a confirmed guarded answer is remembered. Default 60 s, at least 1 s.
    pub remember_ttl: Duration,
    /// Entries of the confirmed-answer memory. Default 100000; 0 turns it off.
    pub remember_max: u32,
    /// How long a credential answered 2xx is remembered after its last 2xx. Default 10 min,
    /// at least 1 s.
    pub accepted_ttl: Duration,
    /// Entries of the accepted-credential memory. Default 100000; 0 turns it off.
    pub accepted_max: u32,
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

/// How a static backend's `addr = "host:port"` is resolved when the config loads (and at every
/// explicit reload). The system's resolver in production; tests substitute their own answers.
pub(crate) trait HostLookup: Send + Sync + fmt::Debug {
    /// Every address of `host`, on `port`.
    fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The system resolver (`getaddrinfo`: `/etc/hosts`, then DNS).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemLookup;

impl HostLookup for SystemLookup {
    fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map(Iterator::collect)
    }
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

/// The first [`limits::MAX_ERRORS_SHOWN`] errors, one per line, then how many more there are.
fn display_lines(errors: &[ConfigError]) -> String {
    let (shown, more) = shown_errors(errors);
    let mut lines: Vec<String> = shown.iter().map(ToString::to_string).collect();
    if more > 0 {
        lines.push(format!("... and {more} more errors"));
    }
    lines.join("\n")
}

/// The errors to show (the first [`limits::MAX_ERRORS_SHOWN`], in position order) and how many
/// are left out: what `check`, the logs and the admin API print of a file with many errors.
pub fn shown_errors(errors: &[ConfigError]) -> (&[ConfigError], usize) {
    let shown = errors.len().min(limits::MAX_ERRORS_SHOWN);
    (&errors[..shown], errors.len() - shown)
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
    /// resolve against the file's directory. The file must be a regular file of at most 16 MiB
    /// (`limits::MAX_CONFIG_BYTES`).
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Config::parse_bytes(&Config::read(path)?, Some(path))
    }

    /// The bytes of the config file at `path`, read as [`Config::load`] reads them.
    pub fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
        crate::files::read(path, limits::MAX_CONFIG_BYTES).map_err(|source| LoadError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Validates the bytes of a config file: UTF-8 (an invalid byte is an error at its
    /// position), then as [`Config::parse`].
    pub fn parse_bytes(bytes: &[u8], path: Option<&Path>) -> Result<Config, LoadError> {
        Config::parse_bytes_with(bytes, path, &SystemLookup)
    }

    /// [`Config::parse_bytes`], resolving `host:port` backend addresses with `lookup`.
    pub(crate) fn parse_bytes_with(
        bytes: &[u8],
        path: Option<&Path>,
        lookup: &dyn HostLookup,
    ) -> Result<Config, LoadError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Config::parse_with(text, path, lookup),
            Err(e) => {
                let valid = e.valid_up_to();
                // The valid prefix is UTF-8 by definition; the error sits at its end.
                let prefix = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
                let mut v = Validator::new(prefix, path, lookup);
                v.error(
                    Some(valid..valid),
                    format!(
                        "invalid UTF-8 (byte 0x{:02x}); a config file must be UTF-8",
                        bytes.get(valid).copied().unwrap_or_default()
                    ),
                );
                Err(LoadError::Invalid(v.finish()))
            }
        }
    }

    /// Validates TOML text. `path` is used for error messages and to resolve relative paths
    /// (None: paths stay relative to the current directory, and errors say `<config>`).
    pub fn parse(text: &str, path: Option<&Path>) -> Result<Config, LoadError> {
        Config::parse_with(text, path, &SystemLookup)
    }

    /// [`Config::parse`], resolving `host:port` backend addresses with `lookup`.
    pub(crate) fn parse_with(
        text: &str,
        path: Option<&Path>,
        lookup: &dyn HostLookup,
    ) -> Result<Config, LoadError> {
        let mut v = Validator::new(text, path, lookup);
        let file: raw::File = match toml::from_str(text) {
            Ok(file) => file,
            Err(e) => {
                // A ConfigError is printed on one line: join any further lines of the message.
                let message = e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                v.error(e.span(), message);
                return Err(LoadError::Invalid(v.finish()));
            }
        };
        let config = v.config(&file, path);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(LoadError::Invalid(v.finish()))
        }
    }
}
