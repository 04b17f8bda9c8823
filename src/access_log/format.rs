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
use std::time::{Duration, UNIX_EPOCH};

use http::Version;

use crate::config::AccessLogFormat;
use crate::metrics::GuardOutcome;

/// What one line says.
#[derive(Debug, Clone)]
pub(super) struct Line<'a> {
    /// When the response completed (or the client went away), since the Unix epoch.
    pub time: Duration,
    /// The client's address and port.
    pub client: SocketAddr,
    pub method: &'a [u8],
    /// The request's path, without its query string (push APIs carry keys there).
    pub path: &'a [u8],
    pub version: Version,
    /// The status sent, or 499 when the client went away before its answer (nginx's code).
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes handed to the client's connection.
    pub bytes_out: u64,
    /// From the request's arrival until its last byte was handed to hyper, or the abort.
    pub duration: Duration,
    /// From sending to the backend that answered until its answer's head arrived.
    pub upstream: Option<Duration>,
    /// `(pool, backend)` whose answer the client got; None for syncgate's own answers.
    pub backend: Option<(&'a [u8], &'a [u8])>,
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

    fn write(&mut self, out: &mut Vec<u8>, since: Duration) {
        let second = since.as_secs();
        if self.second != Some(second) {
            // `2026-01-02T03:04:05Z`: 20 bytes for any year of four digits.
            let mut text = [0u8; 32];
            let mut cursor = &mut text[..];
            let Some(whole) = UNIX_EPOCH.checked_add(Duration::from_secs(second)) else {
                return out.push(b'-');
            };
            if write!(cursor, "{}", humantime::format_rfc3339_seconds(whole)).is_err() {
                return out.push(b'-');
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
    text_escaped(out, l.method);
    out.push(b' ');
    if l.path.is_empty() {
        out.push(b'-');
    } else {
        text_escaped(out, l.path);
    }
    out.push(b' ');
    out.extend_from_slice(version(l.version).as_bytes());
    out.extend_from_slice(b"\" ");
    three_digits(out, u64::from(l.status));
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
        // Names are `[A-Za-z0-9_.-]` (config validation) or such a name and an address
        // (discovery): nothing to escape.
        out.extend_from_slice(b" pool=");
        put(out, pool);
        out.extend_from_slice(b" backend=");
        put(out, backend);
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
    json_escaped(out, l.method);
    out.extend_from_slice(b"\",\"path\":\"");
    json_escaped(out, l.path);
    out.extend_from_slice(b"\",\"version\":\"");
    out.extend_from_slice(version(l.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    three_digits(out, u64::from(l.status));
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
        // Names need no escaping (see `text`).
        out.extend_from_slice(b",\"pool\":\"");
        put(out, pool);
        out.extend_from_slice(b"\",\"backend\":\"");
        put(out, backend);
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

/// `0` to `255` as text: (length, digits).
const OCTETS: [(u8, [u8; 3]); 256] = {
    let mut t = [(0u8, [0u8; 3]); 256];
    let mut n = 0;
    while n < 256 {
        let d = [
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ];
        t[n] = if n >= 100 {
            (3, d)
        } else if n >= 10 {
            (2, [d[1], d[2], 0])
        } else {
            (1, [d[2], 0, 0])
        };
        n += 1;
    }
    t
};

/// `IP:port`, `[IPv6]:port`. IPv4 (the common case) without `fmt`'s machinery.
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                let (len, digits) = OCTETS[usize::from(octet)];
                out.extend_from_slice(&digits[..usize::from(len)]);
            }
            out.push(b':');
            number(out, u64::from(v4.port()));
        }
        // `Vec<u8>` as `io::Write` cannot fail.
        SocketAddr::V6(_) => {
            let _ = write!(out, "{a}");
        }
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        return out.push(b'0' + n as u8);
    }
    put(out, itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `bytes`: a piece of a few bytes (a number, a port) with a loop kept inline, a
/// longer one with `memcpy`.
#[inline]
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() <= 8 {
        out.extend(bytes.iter().copied());
    } else {
        out.extend_from_slice(bytes);
    }
}

/// Milliseconds with three decimals (microsecond resolution): `2.841`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.subsec_micros();
    number(
        out,
        d.as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(micros / 1000)),
    );
    out.push(b'.');
    three_digits(out, u64::from(micros % 1000));
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
    PLAIN[0][usize::from(b)]
}

/// Bytes written as they are: printable ASCII but `"` and `\\` (text also escapes a space,
/// which would split the line's fields; JSON does not need to).
const PLAIN: [[bool; 256]; 2] = {
    let mut t = [[false; 256]; 2];
    let mut b = 0x20;
    while b <= 0x7e {
        if b != b'"' as usize && b != b'\\' as usize {
            t[0][b] = b != 0x20;
            t[1][b] = true;
        }
        b += 1;
    }
    t
};

/// Whether none of `bytes` is to be escaped (as nearly every line's bytes): eight bytes at a
/// time with word arithmetic, the rest one table lookup a byte. `table` is one of [`PLAIN`],
/// whose first entry escapes a space and whose second does not.
fn all_plain(bytes: &[u8], table: &[bool; 256]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Some byte of `x` (all below 0x80) is below `n`.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
    // Some byte of `x` (all below 0x80) is `b`.
    let has = |x: u64, b: u8| below(x ^ (ONES * u64::from(b)), 1);
    let lowest = if table[0x20] { 0x20 } else { 0x21 };
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w);
        if x & HIGH != 0 || below(x, lowest) || has(x, 0x7f) || has(x, b'"') || has(x, b'\\') {
            return false;
        }
    }
    words.remainder().iter().all(|&b| table[usize::from(b)])
}

fn text_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    if all_plain(bytes, &PLAIN[0]) {
        return put(out, bytes);
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
    PLAIN[1][usize::from(b)]
}

fn json_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    if all_plain(bytes, &PLAIN[1]) {
        return put(out, bytes);
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

    fn at(unix_millis: u64) -> Duration {
        Duration::from_millis(unix_millis)
    }

    fn full() -> Line<'static> {
        Line {
            time: at(1_767_323_045_678),
            client: "10.0.0.7:51234".parse().expect("addr"),
            method: b"POST",
            path: b"/v1/batch",
            version: Version::HTTP_11,
            status: 200,
            bytes_in: 1532,
            bytes_out: 17,
            duration: Duration::from_micros(2841),
            upstream: Some(Duration::from_micros(2511)),
            backend: Some((b"push", b"worker-1")),
            guard: Some(GuardOutcome::Contradicted),
            retries: 1,
            request_id: Some(b"4bf92f35"),
            aborted: false,
        }
    }

    fn local() -> Line<'static> {
        Line {
            path: b"/nowhere",
            method: b"GET",
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
            method: b"GE\"T",
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
    fn the_word_at_a_time_check_agrees_with_the_byte_table_for_every_byte_anywhere() {
        for table in &PLAIN {
            for b in 0..=255u8 {
                for at in 0..17 {
                    let mut bytes = vec![b'a'; 17];
                    bytes[at] = b;
                    assert_eq!(
                        all_plain(&bytes, table),
                        table[usize::from(b)],
                        "byte {b:#x} at {at}"
                    );
                }
            }
        }
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
    fn an_empty_path_and_every_kind_of_client_address_are_written_plainly() {
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
        for client in ["0.0.0.0:0", "255.255.255.255:65535", "192.168.10.1:8080"] {
            let l = Line {
                client: client.parse().expect("addr"),
                ..local()
            };
            let text = line(AccessLogFormat::Text, &l);
            assert!(text.contains(&format!("Z {client} \"")), "{text}");
        }
        let huge = Line {
            duration: Duration::MAX,
            ..local()
        };
        // Saturated, never a panic.
        assert!(line(AccessLogFormat::Text, &huge).contains(" 18446744073709551615.999 "));
    }
}
