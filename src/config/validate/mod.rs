//! The [`Validator`]: turns the raw serde types into the validated [`Config`], collecting every
//! error with its position instead of stopping at the first.
//!
//! This file holds the core (error collection, positions, path resolution and the value helpers
//! for integers, floats, durations, sizes, choices, addresses and files); each config section
//! has a file with its own `impl Validator` block.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::limits::{self, DurationRange};
use super::syntax::parse_size;
use super::{raw, Config, ConfigError, HostLookup};

mod access_log;
mod admin;
mod backends;
mod discover;
mod guard;
mod memory;
mod pools;
mod probe;
mod routes;
mod server;
mod server_tls;
mod upstream_tls;

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

/// An error found, at a byte offset of the text; its line and column are computed once for all
/// errors when validation ends ([`Validator::finish`]), in one pass over the text.
pub(super) struct Found {
    offset: Option<usize>,
    message: String,
}

/// Collects every error of one file while building the [`Config`].
pub(super) struct Validator<'a> {
    text: &'a str,
    file: String,
    base: Option<PathBuf>,
    /// Resolves `host:port` backend addresses.
    lookup: &'a dyn HostLookup,
    /// Every error found so far, in the order found.
    pub(super) errors: Vec<Found>,
}

impl<'a> Validator<'a> {
    /// A validator for `text`, read from `path` (None: errors say `<config>` and relative paths
    /// stay relative to the current directory), resolving host names with `lookup`.
    pub(super) fn new(
        text: &'a str,
        path: Option<&Path>,
        lookup: &'a dyn HostLookup,
    ) -> Validator<'a> {
        Validator {
            text,
            file: path.map_or_else(
                || "<config>".to_owned(),
                |p| escape_untrusted(&p.display().to_string()).into_owned(),
            ),
            base: path.and_then(Path::parent).map(Path::to_path_buf),
            lookup,
            errors: Vec::new(),
        }
    }

    /// Records an error at a byte span (None: line 1, column 1). Control and bidirectional
    /// formatting characters in the message (which may quote the file) are escaped, so that
    /// an error cannot forge lines of its own or reorder what a terminal shows.
    pub(super) fn error(&mut self, span: Option<Range<usize>>, message: impl fmt::Display) {
        let message = message.to_string();
        self.errors.push(Found {
            offset: span.map(|s| s.start),
            message: escape_untrusted(&message).into_owned(),
        });
    }

    /// Every error with its line and column, sorted by position (errors at one position in
    /// the order found). Linear in the text plus `n log n` in the errors: the text is walked
    /// once, from one error's offset to the next.
    pub(super) fn finish(self) -> Vec<ConfigError> {
        let mut found = self.errors;
        found.sort_by_key(|f| f.offset.unwrap_or(0));
        let bytes = self.text.as_bytes();
        let (mut pos, mut line, mut col) = (0usize, 1usize, 1usize);
        found
            .into_iter()
            .map(|f| {
                let mut target = f.offset.unwrap_or(0).min(bytes.len());
                while !self.text.is_char_boundary(target) {
                    target -= 1;
                }
                for &b in &bytes[pos.min(target)..target] {
                    if b == b'\n' {
                        line += 1;
                        col = 1;
                    } else if b & 0xC0 != 0x80 {
                        // Not a UTF-8 continuation byte: a character starts here.
                        col += 1;
                    }
                }
                pos = pos.max(target);
                ConfigError {
                    file: self.file.clone(),
                    line,
                    col,
                    message: f.message,
                }
            })
            .collect()
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        match &self.base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// The whole file, section by section; listeners and routes are also checked across sections.
    pub(super) fn config(&mut self, file: &raw::File, path: Option<&Path>) -> Config {
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

    /// An integer in `min..=max` (no `max`: whatever `T` holds).
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
        let in_range = x >= min && max.is_none_or(|max| x <= max);
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

    /// An integer in `range` (one of [`limits`]).
    fn int_in<T: TryFrom<i64> + Copy>(
        &mut self,
        name: &str,
        value: Option<&Spanned<i64>>,
        default: T,
        range: RangeInclusive<i64>,
    ) -> T {
        self.int(name, value, default, *range.start(), Some(*range.end()))
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

    /// A duration of at most [`limits::MAX_DURATION`] (and at least 1 ms unless zero is
    /// allowed). None when the value is present but invalid.
    fn duration(
        &mut self,
        name: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
        zero: Zero,
    ) -> Option<Duration> {
        let range = match zero {
            Zero::Allowed => limits::OPTIONAL,
            Zero::Rejected => limits::TIMEOUT,
        };
        self.duration_in(name, value, default, range)
    }

    /// A duration within `range` (one of [`limits`]). None when the value is present but
    /// invalid.
    fn duration_in(
        &mut self,
        name: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
        range: DurationRange,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(default);
        };
        let text = value.get_ref();
        let problem = match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !range.min.is_zero() => format!("{name} must be greater than 0"),
            Ok(d) if d < range.min => {
                format!("{name} must be at least {} (got \"{text}\")", duration_text(range.min))
            }
            Ok(d) if d > range.max => {
                format!("{name} must be at most {} (got \"{text}\")", duration_text(range.max))
            }
            Ok(d) => return Some(d),
            Err(e) => format!(
                "{name} \"{text}\" is not a duration ({e}); expected e.g. \"250ms\", \"2s\" or \"1m\""
            ),
        };
        self.error(span_of(value), problem);
        None
    }

    /// A size in `range` (one of [`limits`]); a string such as `"8MiB"` or a number of bytes.
    fn size(
        &mut self,
        name: &str,
        value: Option<&Spanned<raw::Size>>,
        default: u64,
        range: RangeInclusive<u64>,
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
        let message = match parsed {
            Ok(n) if range.contains(&n) => return n,
            Ok(0) => format!("{name} must be greater than 0"),
            Ok(n) if n < *range.start() => {
                format!("{name} must be at least {} bytes (got {n})", range.start())
            }
            Ok(n) => format!(
                "{name} must be at most {} (got {n} bytes)",
                crate::files::size_text(*range.end())
            ),
            Err(message) => message,
        };
        self.error(span_of(value), message);
        default
    }

    /// One of `options`, matched by its `Display` form: the spelling the enum itself carries.
    fn choice<T: Copy + fmt::Display>(
        &mut self,
        name: &str,
        value: Option<&Spanned<String>>,
        default: T,
        options: &[T],
    ) -> T {
        let Some(value) = value else {
            return default;
        };
        if let Some(t) = options.iter().find(|t| t.to_string() == *value.get_ref()) {
            return *t;
        }
        let allowed = options
            .iter()
            .map(|t| format!("\"{t}\""))
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

    /// A path that must name a regular file of at most [`limits::MAX_NAMED_FILE_BYTES`] that
    /// can be opened; resolved against the config's directory.
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
        if let Err(e) = crate::files::open(&path, limits::MAX_NAMED_FILE_BYTES) {
            self.error(
                span_of(value),
                format!(
                    "{} file \"{}\" {}",
                    key.name,
                    path.display(),
                    file_problem(&e)
                ),
            );
        }
        path
    }
}

/// What is wrong with a file, as the end of a sentence that names it.
fn file_problem(e: &std::io::Error) -> String {
    match e.kind() {
        // `files` words these itself: "is a directory", "is not a regular file", "is larger..."
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => e.to_string(),
        _ => format!("cannot be read: {e}"),
    }
}

/// A limit as a config file would write it: `24h`, `1m`, `10ms`.
fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_nanos()) {
        (0, nanos) if nanos % 1_000_000 == 0 => format!("{}ms", nanos / 1_000_000),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// `text` with control characters (`\n`, `\r`, `\t`, and others as `\u{..}`) and Unicode
/// bidirectional formatting characters (`\u{202e}` and kin) escaped; borrowed when there are
/// none.
pub(super) fn escape_untrusted(text: &str) -> Cow<'_, str> {
    let needs = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::{AdminToken, Config};

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
        assert!(errors[0]
            .message
            .contains("probe.rise must be between 1 and 1000 (got 0)"));
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
