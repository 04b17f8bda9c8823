//! Host names as routes compare them.

/// `host:port` → `host`, `[v6]:port` → `[v6]`; anything else unchanged.
///
/// The brackets of an IPv6 literal stay, as [`http::uri::Authority::host`] keeps them: a
/// route's host, an HTTP/1.1 `Host` header and an HTTP/2 `:authority` are then compared in
/// one form. Only an all-digit, non-empty port is removed: `::1` (a bare IPv6 address) and
/// `name:x` come back unchanged. Case is left alone.
pub fn strip_port(host: &str) -> &str {
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if host.starts_with('[') {
        if let Some(end) = host.find(']') {
            let rest = &host[end + 1..];
            if rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port) {
                return &host[..=end];
            }
        }
        return host;
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && is_port(port) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_goes_and_ipv6_brackets_stay() {
        assert_eq!(strip_port("Push.Example.com:8080"), "Push.Example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn what_is_not_a_port_stays() {
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("example.com:"), "example.com:");
        assert_eq!(strip_port("example.com:http"), "example.com:http");
        assert_eq!(strip_port("[::1]:"), "[::1]:");
        assert_eq!(strip_port("[::1]x"), "[::1]x");
    }

    #[test]
    fn agrees_with_the_http2_authority() {
        for text in [
            "[::1]:8080",
            "[::1]",
            "push.example.com:443",
            "push.example.com",
        ] {
            let authority: http::uri::Authority = text.parse().unwrap();
            assert_eq!(strip_port(text), authority.host(), "{text}");
        }
    }
}
