//! The request head as it goes upstream, written once from the client's head: origin-form
//! target, HTTP/1.1, hop-by-hop headers left out (RFC 9110 §7.6.1, with those `Connection`
//! names), forwarding headers set; the request's host and id. The answer's hop-by-hop headers
//! are left out where its head is read (`upstream/codec.rs`).
//!
//! Writing the head straight from the client's header map, instead of editing the map and
//! encoding it afterwards, costs no hash-table inserts or removals per request.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::Uri;

use crate::conn::ConnInfo;
use crate::host::strip_port;
use crate::upstream::HeadWriter;

pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is hop-by-hop whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
}

/// The header names the client's `Connection` headers list (hop-by-hop too). Usually none:
/// `close` and `keep-alive` name no header a request carries otherwise.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || token.eq_ignore_ascii_case(b"keep-alive")
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    named
}

/// Writes the upstream request head (without its framing, which the body decides) from the
/// client's: origin-form target, HTTP/1.1; hop-by-hop headers and the client's framing
/// headers left out; `Host` and `X-Forwarded-Host` set to the client's host (the target's
/// authority when it has one, else its `Host`), the client's IP appended to `X-Forwarded-For`,
/// `X-Forwarded-Proto` set; `X-Request-Id` added when syncgate generated it (`generated_id`).
pub(super) fn upstream_head(
    parts: &Parts,
    conn: &ConnInfo,
    generated_id: Option<&HeaderValue>,
) -> HeadWriter {
    let headers = &parts.headers;
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // An absolute-form or authority-form target has no path: "/" then, as before.
    let target = if target.starts_with('/') || target == "*" {
        target
    } else {
        "/"
    };
    let mut head = HeadWriter::new(&parts.method, target);
    // The target's authority first, as routing reads it: an absolute-form target or an HTTP/2
    // `:authority` names the host, and a `Host` field beside it is ignored (RFC 9112 3.2.2),
    // so that a worker never sees another host than the one its pool was routed by.
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| headers.get(header::HOST).cloned());
    let named = if headers.contains_key(header::CONNECTION) {
        connection_named(headers)
    } else {
        Vec::new()
    };
    for (name, value) in headers {
        if is_hop_by_hop(name)
            || name == header::CONTENT_LENGTH
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || (host.is_some() && (name == header::HOST || name == X_FORWARDED_HOST))
            || named.contains(name)
        {
            continue;
        }
        head.header(name.as_str().as_bytes(), value.as_bytes());
    }
    // One field: the client's values in order, then its IP.
    let xff = X_FORWARDED_FOR.as_str().as_bytes();
    let mut earlier = headers.get_all(&X_FORWARDED_FOR).iter();
    match earlier.next().filter(|_| !named.contains(&X_FORWARDED_FOR)) {
        None => head.header(xff, conn.peer_ip.as_bytes()),
        Some(first) => {
            head.header(xff, first.as_bytes());
            for v in earlier {
                head.extend_value(b", ");
                head.extend_value(v.as_bytes());
            }
            head.extend_value(b", ");
            head.extend_value(conn.peer_ip.as_bytes());
        }
    }
    if let Some(h) = &host {
        head.header(b"host", h.as_bytes());
        head.header(X_FORWARDED_HOST.as_str().as_bytes(), h.as_bytes());
    }
    head.header(
        X_FORWARDED_PROTO.as_str().as_bytes(),
        if conn.tls { b"https" } else { b"http" },
    );
    if let Some(id) = generated_id {
        head.header(X_REQUEST_ID.as_str().as_bytes(), id.as_bytes());
    }
    head
}

/// The request's host, lower-cased and without port, in the form routes are written: the URI
/// authority (HTTP/2, absolute form) or the `Host` header, an IPv6 literal in brackets
/// either way.
pub(super) fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<Cow<'a, str>> {
    let raw = match uri.authority() {
        Some(a) => a.host(),
        None => strip_port(headers.get(header::HOST)?.to_str().ok()?),
    };
    // Host names almost always arrive lower-case already: allocate only when they do not.
    Some(if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    })
}

/// The declared `Content-Length`, if any and valid.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A new request id: 32 random hex digits.
pub(super) fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v = fastrand::u128(..);
    let mut id = [0u8; 32];
    for (i, c) in id.iter_mut().enumerate() {
        *c = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::ReqFraming;
    use http::Request;

    /// The head `upstream_head` writes for `req`: its request line and its fields, in order.
    fn written<B>(req: Request<B>, conn: &ConnInfo) -> (String, Vec<(String, String)>) {
        let (parts, _) = req.into_parts();
        let head =
            upstream_head(&parts, conn, None).finish(ReqFraming::Empty { said_length: false });
        let text = String::from_utf8(head.to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap().to_string();
        let fields = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_string(), v.to_string())
            })
            .collect();
        (line, fields)
    }

    fn values<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn peer() -> ConnInfo {
        ConnInfo::new("10.1.2.3:5555".parse().unwrap(), false)
    }

    #[test]
    fn hop_by_hop_headers_go_including_connection_named() {
        let req = Request::post("/p?q=1")
            .header(header::HOST, "push.example.com")
            .header(header::CONNECTION, "close, x-secret")
            .header("x-secret", "1")
            .header("keep-alive", "timeout=5")
            .header(header::TRANSFER_ENCODING, "chunked")
            .header(header::UPGRADE, "websocket")
            .header(header::CONTENT_LENGTH, "7")
            .header("x-kept", "1")
            .body(())
            .unwrap();
        let (line, fields) = written(req, &peer());
        assert_eq!(line, "POST /p?q=1 HTTP/1.1");
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-kept",
                "x-forwarded-for",
                "host",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
    }

    #[test]
    fn the_worker_sees_the_host_the_request_was_routed_by() {
        // Absolute form with another Host beside it: routing reads the target's authority,
        // and so does the worker.
        let req = Request::get("http://a.example.com/v1/batch")
            .header(header::HOST, "b.example.com")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("a.example.com"));
        let (line, fields) = written(req, &peer());
        assert_eq!(line, "GET /v1/batch HTTP/1.1");
        assert_eq!(values(&fields, "host"), ["a.example.com"]);
        assert_eq!(values(&fields, "x-forwarded-host"), ["a.example.com"]);
        // Origin form: the Host field names the host.
        let req = Request::get("/v1/batch")
            .header(header::HOST, "b.example.com:8080")
            .body(())
            .unwrap();
        let (_, fields) = written(req, &peer());
        assert_eq!(values(&fields, "host"), ["b.example.com:8080"]);
    }

    #[test]
    fn forwarded_for_appends_in_one_field() {
        let (_, alone) = written(Request::get("/").body(()).unwrap(), &peer());
        assert_eq!(values(&alone, "x-forwarded-for"), ["10.1.2.3"]);
        let req = Request::get("/")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-other", "between")
            .header("x-forwarded-for", "2.2.2.2")
            .body(())
            .unwrap();
        let (_, fields) = written(req, &peer());
        assert_eq!(
            values(&fields, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 10.1.2.3"]
        );
        assert_eq!(values(&fields, "x-other"), ["between"]);
    }

    #[test]
    fn a_generated_request_id_goes_upstream_a_client_one_stays() {
        let id = new_request_id();
        let (parts, _) = Request::get("/").body(()).unwrap().into_parts();
        let head = upstream_head(&parts, &peer(), Some(&id))
            .finish(ReqFraming::Empty { said_length: false });
        let text = String::from_utf8(head.to_vec()).unwrap();
        assert!(text.contains(&format!("x-request-id: {}\r\n", id.to_str().unwrap())));
        let (_, fields) = written(
            Request::get("/")
                .header("x-request-id", "mine")
                .body(())
                .unwrap(),
            &peer(),
        );
        assert_eq!(values(&fields, "x-request-id"), ["mine"]);
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    fn host_of<B>(req: &Request<B>) -> Option<String> {
        request_host(req.uri(), req.headers()).map(|h| h.into_owned())
    }

    #[test]
    fn host_parsing() {
        let req = Request::get("/x")
            .header(header::HOST, "PUSH.example.com:80")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("push.example.com"));
        let req = Request::get("http://a.example.com/x").body(()).unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("a.example.com"));
    }

    #[test]
    fn an_ipv6_host_keeps_its_brackets_over_http1_and_http2_alike() {
        let http1 = Request::get("/x")
            .header(header::HOST, "[::1]:8080")
            .body(())
            .unwrap();
        let http2 = Request::get("http://[::1]:8080/x").body(()).unwrap();
        assert_eq!(host_of(&http1).as_deref(), Some("[::1]"));
        assert_eq!(host_of(&http2).as_deref(), Some("[::1]"));
    }

    mod properties {
        //! Request-head handling under arbitrary headers (issue 10, "Also build"); proptest's
        //! default case count (256, `PROPTEST_CASES` overrides).

        use super::*;
        use proptest::prelude::*;

        const HOP_BY_HOP: [&str; 9] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
        ];
        /// Written by syncgate whatever the client sent.
        const REWRITTEN: [&str; 5] = [
            "host",
            "x-forwarded-host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "content-length",
        ];

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(HOP_BY_HOP.to_vec()).prop_map(str::to_owned),
                prop::sample::select(vec!["host", "x-forwarded-for", "authorization", "x-a"])
                    .prop_map(str::to_owned),
                "x-[a-z0-9-]{1,8}",
            ]
        }

        fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
            prop::collection::vec((name(), "[ -~]{0,24}"), 0..12)
        }

        fn header_map(pairs: &[(String, String)]) -> HeaderMap {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v.trim()),
                ) {
                    map.append(k, v);
                }
            }
            map
        }

        proptest! {
            #[test]
            fn hop_by_hop_headers_and_those_connection_names_never_pass(
                pairs in headers(),
                named in prop::collection::vec("x-[a-z0-9-]{1,8}", 0..3),
            ) {
                let mut map = header_map(&pairs);
                if !named.is_empty() {
                    let value = HeaderValue::from_str(&named.join(", ")).unwrap();
                    map.append(header::CONNECTION, value);
                }
                let nominated: Vec<String> = map
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect();
                let mut req = Request::get("/").body(()).unwrap();
                *req.headers_mut() = map.clone();
                let (_, fields) = written(req, &peer());
                let gone = HOP_BY_HOP.iter().copied().chain(nominated.iter().map(String::as_str));
                for name in gone {
                    prop_assert!(values(&fields, name).is_empty(), "{name} passed");
                }
                // Everything else passes untouched, in order.
                for (name, _) in map.iter() {
                    let dropped = HOP_BY_HOP.contains(&name.as_str())
                        || REWRITTEN.contains(&name.as_str())
                        || nominated.iter().any(|n| n == name.as_str());
                    if !dropped {
                        let kept = values(&fields, name.as_str());
                        let had: Vec<&str> = map.get_all(name).iter().map(|v| v.to_str().unwrap()).collect();
                        prop_assert_eq!(kept, had);
                    }
                }
            }

            #[test]
            fn the_upstream_request_carries_the_forwarding_headers_and_no_hop_by_hop(
                pairs in headers(),
                host in "[A-Za-z0-9.-]{1,20}(:[0-9]{1,5})?",
                path in "/[ -~&&[^ #?]]{0,20}",
                peer in any::<std::net::SocketAddr>(),
                tls in any::<bool>(),
            ) {
                let mut builder = Request::post(path.as_str()).header(header::HOST, host.as_str());
                for (k, v) in header_map(&pairs).iter() {
                    if k != header::HOST {
                        builder = builder.header(k, v);
                    }
                }
                let Ok(req) = builder.body(()) else {
                    return Ok(());
                };
                let earlier_xff: Vec<String> = req
                    .headers()
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("").to_owned())
                    .collect();
                let connection_names_xff = req
                    .headers()
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|t| t.trim().eq_ignore_ascii_case("x-forwarded-for"));
                let uri_path = req.uri().path_and_query().unwrap().as_str().to_owned();
                let conn = ConnInfo::new(peer, tls);
                let (line, fields) = written(req, &conn);
                prop_assert_eq!(line, format!("POST {uri_path} HTTP/1.1"));
                prop_assert_eq!(values(&fields, "host"), [host.as_str()]);
                prop_assert_eq!(values(&fields, "x-forwarded-host"), [host.as_str()]);
                prop_assert_eq!(
                    values(&fields, "x-forwarded-proto"),
                    [if tls { "https" } else { "http" }]
                );
                let mut expected = if connection_names_xff { Vec::new() } else { earlier_xff };
                expected.push(peer.ip().to_string());
                prop_assert_eq!(values(&fields, "x-forwarded-for"), [expected.join(", ")]);
                for name in HOP_BY_HOP {
                    prop_assert!(values(&fields, name).is_empty());
                }
            }

            #[test]
            fn the_request_host_is_lower_case_without_its_port(
                name in "[A-Za-z0-9.-]{1,20}",
                port in prop::option::of(any::<u16>()),
                junk in "[!-~]{0,20}",
            ) {
                let value = match port {
                    Some(p) => format!("{name}:{p}"),
                    None => name.clone(),
                };
                let req = Request::get("/").header(header::HOST, value.as_str()).body(()).unwrap();
                let expected = name.to_ascii_lowercase();
                let host = request_host(req.uri(), req.headers());
                prop_assert_eq!(host.as_deref(), Some(expected.as_str()));
                // Any other visible value: an answer or none, never a panic, never upper case.
                if let Ok(req) = Request::get("/").header(header::HOST, junk.as_str()).body(()) {
                    if let Some(h) = request_host(req.uri(), req.headers()) {
                        prop_assert!(!h.bytes().any(|b| b.is_ascii_uppercase()));
                    }
                }
            }
        }
    }
}
