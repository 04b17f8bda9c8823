//! One access log line, pure: a [`Line`] written as text or JSON at the end of a buffer,
//! without allocating.
//!
//! Text, like nginx's `combined` format: positional fields, then `key=value` for the fields a
//! request may lack. JSON: one flat object with stable field names. Bytes that came from the
//! client (method, path, `x-request-id`) are escaped: in text, anything outside printable
//! ASCII, a space, `"` and `\` as `\xHH` (as nginx does); in JSON, `"` and `\` as `\"` and
//! `\\`, anything outside printable ASCII as `\u00HH`. A line can thus never be split, forged
//! or made to carry terminal escapes.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Version;

use crate::config::AccessLogFormat;
use crate::metrics::GuardOutcome;

/// What one line says.
#[derive(Debug, Clone)]
pub(super) struct Line<'a> {
    /// When the line was written (the response completed, or the client went away).
    pub time: SystemTime,
    /// The client's address and port.
    pub client: SocketAddr,
    pub method: &'a str,
    /// The request's path, without its query string (push APIs carry keys there).
    pub path: &'a [u8],
    pub version: Version,
    /// The status sent, or 499 when the client went away before its answer (nginx's code).
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes handed to the client's connection.
    pub bytes_out: u64,
    /// From the request's arrival until its last byte was handed to the socket, or the abort.
    pub duration: Duration,
    /// From sending to the backend that answered until its answer's head arrived.
    pub upstream: Option<Duration>,
    /// `(pool, backend)` whose answer the client got; None for syncgate's own answers.
    pub backend: Option<(&'a str, &'a str)>,
    /// The guard's outcome, when the answer was a guarded status.
    pub guard: Option<GuardOutcome>,
    /// Attempts after the first: connect retries and second-opinion replays.
    pub retries: u32,
    pub request_id: Option<&'a [u8]>,
    /// The client went away before the response was complete.
    pub aborted: bool,
}

/// The wall-clock time of a line as RFC 3339 (UTC, milliseconds). The date and time up to the
/// second are rendered once per second and kept.
#[derive(Debug)]
pub(super) struct Clock {
    second: Option<u64>,
    /// `2026-01-02T03:04:05.`
    prefix: [u8; 20],
}

impl Clock {
    pub(super) const fn new() -> Clock {
        Clock {
            second: None,
            prefix: [0; 20],
        }
    }

    fn write(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            // `2026-01-02T03:04:05Z`: 20 bytes for any year of four digits.
            let mut text = [0u8; 32];
            let mut cursor = &mut text[..];
            let whole = UNIX_EPOCH + Duration::from_secs(second);
            if write!(cursor, "{}", humantime::format_rfc3339_seconds(whole)).is_err() {
                return out.extend_from_slice(b"-");
            }
            self.prefix[..19].copy_from_slice(&text[..19]);
            self.prefix[19] = b'.';
            self.second = Some(second);
        }
        out.extend_from_slice(&self.prefix);
        let millis = since.subsec_millis();
        three_digits(out, u64::from(millis));
        out.push(b'Z');
    }
}

/// Appends `line` in `format`, newline included.
pub(super) fn write(
    out: &mut Vec<u8>,
    format: AccessLogFormat,
    line: &Line<'_>,
    clock: &mut Clock,
) {
    match format {
        AccessLogFormat::Text => text(out, line, clock),
        AccessLogFormat::Json => json(out, line, clock),
    }
}

fn text(out: &mut Vec<u8>, l: &Line<'_>, clock: &mut Clock) {
    clock.write(out, l.time);
    out.push(b' ');
    addr(out, l.client);
    out.extend_from_slice(b" \"");
    text_escaped(out, l.method.as_bytes());
    out.push(b' ');
    if l.path.is_empty() {
        out.push(b'-');
    } else {
        text_escaped(out, l.path);
    }
    out.push(b' ');
    out.extend_from_slice(version(l.version).as_bytes());
    out.extend_from_slice(b"\" ");
    number(out, u64::from(l.status));
    out.push(b' ');
    number(out, l.bytes_in);
    out.push(b' ');
    number(out, l.bytes_out);
    out.push(b' ');
    millis(out, l.duration);
    if let Some(id) = l.request_id {
        out.extend_from_slice(b" request_id=");
        text_escaped(out, id);
    }
    if let Some(d) = l.upstream {
        out.extend_from_slice(b" upstream_ms=");
        millis(out, d);
    }
    if let Some((pool, backend)) = l.backend {
        out.extend_from_slice(b" pool=");
        text_escaped(out, pool.as_bytes());
        out.extend_from_slice(b" backend=");
        text_escaped(out, backend.as_bytes());
    }
    if let Some(g) = l.guard {
        out.extend_from_slice(b" guard=");
        out.extend_from_slice(g.as_str().as_bytes());
    }
    if l.retries > 0 {
        out.extend_from_slice(b" retries=");
        number(out, u64::from(l.retries));
    }
    if l.aborted {
        out.extend_from_slice(b" aborted=true");
    }
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, l: &Line<'_>, clock: &mut Clock) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.write(out, l.time);
    out.extend_from_slice(b"\",\"client\":\"");
    addr(out, l.client);
    out.extend_from_slice(b"\",\"method\":\"");
    json_escaped(out, l.method.as_bytes());
    out.extend_from_slice(b"\",\"path\":\"");
    json_escaped(out, l.path);
    out.extend_from_slice(b"\",\"version\":\"");
    out.extend_from_slice(version(l.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    number(out, u64::from(l.status));
    out.extend_from_slice(b",\"bytes_in\":");
    number(out, l.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    number(out, l.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, l.duration);
    if let Some(d) = l.upstream {
        out.extend_from_slice(b",\"upstream_ms\":");
        millis(out, d);
    }
    if let Some((pool, backend)) = l.backend {
        out.extend_from_slice(b",\"pool\":\"");
        json_escaped(out, pool.as_bytes());
        out.extend_from_slice(b"\",\"backend\":\"");
        json_escaped(out, backend.as_bytes());
        out.push(b'"');
    }
    if let Some(g) = l.guard {
        out.extend_from_slice(b",\"guard\":\"");
        out.extend_from_slice(g.as_str().as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b",\"retries\":");
    number(out, u64::from(l.retries));
    if let Some(id) = l.request_id {
        out.extend_from_slice(b",\"request_id\":\"");
        json_escaped(out, id);
        out.push(b'"');
    }
    out.extend_from_slice(if l.aborted {
        b",\"aborted\":true}\n"
    } else {
        b",\"aborted\":false}\n"
    });
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    // `Vec<u8>` as `io::Write` cannot fail.
    let _ = write!(out, "{a}");
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds with three decimals (microsecond resolution): `2.841`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    number(out, micros / 1000);
    out.push(b'.');
    three_digits(out, micros % 1000);
}

/// `n` (below 1000) as three digits.
fn three_digits(out: &mut Vec<u8>, n: u64) {
    let n = n % 1000;
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn text_safe(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && b != b'"' && b != b'\\'
}

fn text_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.iter().all(|&b| text_safe(b)) {
        return out.extend_from_slice(bytes);
    }
    for &b in bytes {
        if text_safe(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
    }
}

fn json_safe(b: u8) -> bool {
    matches!(b, 0x20..=0x7e) && b != b'"' && b != b'\\'
}

fn json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.iter().all(|&b| json_safe(b)) {
        return out.extend_from_slice(bytes);
    }
    for &b in bytes {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if json_safe(b) => out.push(b),
            b => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(unix_millis)
    }

    fn full() -> Line<'static> {
        Line {
            time: at(1_767_323_045_678),
            client: "10.0.0.7:51234".parse().expect("addr"),
            method: "POST",
            path: b"/v1/batch",
            version: Version::HTTP_11,
            status: 200,
            bytes_in: 1532,
            bytes_out: 17,
            duration: Duration::from_micros(2841),
            upstream: Some(Duration::from_micros(2511)),
            backend: Some(("push", "worker-1")),
            guard: Some(GuardOutcome::Contradicted),
            retries: 1,
            request_id: Some(b"4bf92f35"),
            aborted: false,
        }
    }

    fn local() -> Line<'static> {
        Line {
            path: b"/nowhere",
            method: "GET",
            status: 404,
            bytes_in: 0,
            bytes_out: 48,
            duration: Duration::from_micros(95),
            upstream: None,
            backend: None,
            guard: None,
            retries: 0,
            ..full()
        }
    }

    fn line(format: AccessLogFormat, l: &Line<'_>) -> String {
        let mut out = Vec::new();
        write(&mut out, format, l, &mut Clock::new());
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn a_text_line_has_positional_fields_then_the_optional_ones_as_key_value() {
        assert_eq!(
            line(AccessLogFormat::Text, &full()),
            "2026-01-02T03:04:05.678Z 10.0.0.7:51234 \"POST /v1/batch HTTP/1.1\" 200 1532 17 \
             2.841 request_id=4bf92f35 upstream_ms=2.511 pool=push backend=worker-1 \
             guard=contradicted retries=1\n"
        );
        assert_eq!(
            line(AccessLogFormat::Text, &local()),
            "2026-01-02T03:04:05.678Z 10.0.0.7:51234 \"GET /nowhere HTTP/1.1\" 404 0 48 0.095 \
             request_id=4bf92f35\n"
        );
        let gone = Line {
            status: 499,
            aborted: true,
            request_id: None,
            version: Version::HTTP_2,
            ..local()
        };
        assert_eq!(
            line(AccessLogFormat::Text, &gone),
            "2026-01-02T03:04:05.678Z 10.0.0.7:51234 \"GET /nowhere HTTP/2.0\" 499 0 48 0.095 \
             aborted=true\n"
        );
    }

    #[test]
    fn a_json_line_is_one_flat_object_with_stable_names() {
        let text = line(AccessLogFormat::Json, &full());
        assert!(text.ends_with("}\n") && text.lines().count() == 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-01-02T03:04:05.678Z",
                "client": "10.0.0.7:51234",
                "method": "POST",
                "path": "/v1/batch",
                "version": "HTTP/1.1",
                "status": 200,
                "bytes_in": 1532,
                "bytes_out": 17,
                "duration_ms": 2.841,
                "upstream_ms": 2.511,
                "pool": "push",
                "backend": "worker-1",
                "guard": "contradicted",
                "retries": 1,
                "request_id": "4bf92f35",
                "aborted": false,
            })
        );
        let v: serde_json::Value =
            serde_json::from_str(&line(AccessLogFormat::Json, &local())).expect("JSON");
        for absent in ["upstream_ms", "pool", "backend", "guard"] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
        assert_eq!(v["retries"], 0);
        assert_eq!(v["aborted"], false);
    }

    #[test]
    fn client_bytes_cannot_split_forge_or_colour_a_line() {
        let hostile = Line {
            method: "GE\"T",
            path: b"/a b\"c\\d\x1b[31m\n\xff",
            request_id: Some(b"id\" x=\"1\r\n2026-01-01 forged"),
            ..local()
        };
        let text = line(AccessLogFormat::Text, &hostile);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("\"GE\\x22T /a\\x20b\\x22c\\x5Cd\\x1B[31m\\x0A\\xFF HTTP/1.1\" 404"),
            "{text}"
        );
        assert!(
            text.contains("request_id=id\\x22\\x20x=\\x221\\x0D\\x0A2026-01-01\\x20forged"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        let json = line(AccessLogFormat::Json, &hostile);
        assert_eq!(json.lines().count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("still JSON");
        assert_eq!(v["method"], "GE\"T");
        assert_eq!(v["path"], "/a b\"c\\d\u{1b}[31m\n\u{ff}");
        assert_eq!(v["request_id"], "id\" x=\"1\r\n2026-01-01 forged");
        assert!(json.is_ascii(), "{json}");
    }

    #[test]
    fn times_render_milliseconds_and_follow_the_clock_across_seconds() {
        let mut clock = Clock::new();
        let mut out = Vec::new();
        for t in [0, 999, 1_000, 86_400_000 + 7] {
            clock.write(&mut out, at(t));
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "1970-01-01T00:00:00.000Z 1970-01-01T00:00:00.999Z 1970-01-01T00:00:01.000Z \
             1970-01-02T00:00:00.007Z "
        );
    }

    #[test]
    fn an_empty_path_and_ipv6_clients_are_written_plainly() {
        let l = Line {
            path: b"",
            client: "[2001:db8::1]:443".parse().expect("addr"),
            ..local()
        };
        let text = line(AccessLogFormat::Text, &l);
        assert!(
            text.contains(" [2001:db8::1]:443 \"GET - HTTP/1.1\" "),
            "{text}"
        );
        let huge = Line {
            duration: Duration::MAX,
            ..local()
        };
        assert!(line(AccessLogFormat::Text, &huge).contains(" 18446744073709551.615 "));
    }
}
