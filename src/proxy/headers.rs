//! The request's and the answer's headers on their way through: the upstream request in
//! origin form, hop-by-hop headers removed, forwarding headers set; the request's host and
//! id.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use crate::body::ReqBody;
use crate::conn::ConnInfo;
use crate::host::strip_port;

pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Builds the upstream request in place from the client's: origin-form URI, HTTP/1.1,
/// hop-by-hop headers removed, forwarding headers set.
pub(super) fn upstream_request(
    mut parts: http::request::Parts,
    body: ReqBody,
    conn: &ConnInfo,
) -> Request<ReqBody> {
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(h) = &original_host {
        headers.insert(header::HOST, h.clone());
        headers.insert(X_FORWARDED_HOST.clone(), h.clone());
    }
    append_forwarded_for(headers, &conn.peer_ip);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    parts.extensions = http::Extensions::new();
    Request::from_parts(parts, body)
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if values.peek().is_none() {
        // The common case: no allocation, the connection's rendered IP is shared.
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        return;
    }
    let mut s = Vec::new();
    for v in values {
        s.extend_from_slice(v.as_bytes());
        s.extend_from_slice(b", ");
    }
    s.extend_from_slice(peer_ip.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(s)) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
}

/// The request's host, lower-cased and without port, in the form routes are written: the URI
/// authority (HTTP/2, absolute form) or the `Host` header, an IPv6 literal in brackets
/// either way.
pub(super) fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = match req.uri().authority() {
        Some(a) => a.host(),
        None => strip_port(req.headers().get(header::HOST)?.to_str().ok()?),
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

    #[test]
    fn hop_by_hop_headers_go_including_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        let conn = ConnInfo::new("10.1.2.3:5555".parse().unwrap(), false);
        append_forwarded_for(&mut h, &conn.peer_ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3");
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        append_forwarded_for(&mut h, &conn.peer_ip);
        assert_eq!(h[&X_FORWARDED_FOR], "10.1.2.3, 1.1.1.1, 10.1.2.3");
    }

    #[test]
    fn request_ids_are_32_hex_digits() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.to_str().unwrap().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn host_parsing() {
        let req = Request::get("/x")
            .header(header::HOST, "PUSH.example.com:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("push.example.com"));
        let req = Request::get("http://a.example.com/x").body(()).unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("a.example.com"));
    }

    #[test]
    fn an_ipv6_host_keeps_its_brackets_over_http1_and_http2_alike() {
        let http1 = Request::get("/x")
            .header(header::HOST, "[::1]:8080")
            .body(())
            .unwrap();
        let http2 = Request::get("http://[::1]:8080/x").body(()).unwrap();
        assert_eq!(request_host(&http1).as_deref(), Some("[::1]"));
        assert_eq!(request_host(&http2).as_deref(), Some("[::1]"));
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
                let before = map.clone();
                let nominated: Vec<String> = before
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect();
                strip_hop_by_hop(&mut map);
                let gone = HOP_BY_HOP.iter().copied().chain(nominated.iter().map(String::as_str));
                for name in gone {
                    prop_assert!(!map.contains_key(name), "{name} passed");
                }
                // Everything else passes untouched, in order.
                for (name, _) in before.iter() {
                    let dropped = HOP_BY_HOP.contains(&name.as_str())
                        || nominated.iter().any(|n| n == name.as_str());
                    if !dropped {
                        let kept: Vec<_> = map.get_all(name).iter().collect();
                        let had: Vec<_> = before.get_all(name).iter().collect();
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
                let (parts, ()) = req.into_parts();
                let conn = ConnInfo::new(peer, tls);
                let up = upstream_request(parts, ReqBody::empty(), &conn);
                prop_assert_eq!(up.version(), Version::HTTP_11);
                prop_assert!(up.uri().authority().is_none());
                prop_assert!(up.uri().path().starts_with('/'));
                prop_assert_eq!(up.headers()[header::HOST].as_bytes(), host.as_bytes());
                prop_assert_eq!(up.headers()[&X_FORWARDED_HOST].as_bytes(), host.as_bytes());
                prop_assert_eq!(
                    &up.headers()[&X_FORWARDED_PROTO],
                    if tls { "https" } else { "http" }
                );
                let xff = up.headers()[&X_FORWARDED_FOR].to_str().unwrap().to_owned();
                let mut expected = earlier_xff;
                expected.push(peer.ip().to_string());
                prop_assert_eq!(xff, expected.join(", "));
                for name in HOP_BY_HOP {
                    prop_assert!(!up.headers().contains_key(name));
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
                let host = request_host(&req);
                prop_assert_eq!(host.as_deref(), Some(expected.as_str()));
                // Any other visible value: an answer or none, never a panic, never upper case.
                if let Ok(req) = Request::get("/").header(header::HOST, junk.as_str()).body(()) {
                    if let Some(h) = request_host(&req) {
                        prop_assert!(!h.bytes().any(|b| b.is_ascii_uppercase()));
                    }
                }
            }
        }
    }
}
