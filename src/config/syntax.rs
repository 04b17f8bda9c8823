//! Syntax of config values that are not plain TOML types: sizes, route host patterns, names.

use std::net::Ipv6Addr;

use super::HostMatch;

/// Parses a size: an integer or decimal number, optional spaces, and a unit among `B`, `KB`,
/// `MB`, `GB` (powers of 1000), `KiB`, `MiB`, `GiB` (powers of 1024), case-insensitive.
/// The result must be a whole number of bytes.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start_matches(' ');
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "" if number.is_empty() => return Err("it does not start with a number".to_owned()),
        "" => return Err("the unit is missing".to_owned()),
        _ if number.is_empty() => return Err("it does not start with a number".to_owned()),
        _ => return Err(format!("unknown unit \"{unit}\"")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || frac.contains('.') || (number.contains('.') && frac.is_empty()) {
        return Err(format!("\"{number}\" is not a number"));
    }
    let too_large = || "it is too large".to_owned();
    let int: u64 = int.parse().map_err(|_| too_large())?;
    let mut bytes = int.checked_mul(multiplier).ok_or_else(too_large)?;
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        let digits = u32::try_from(frac.len()).map_err(|_| too_large())?;
        let denominator = 10u128.checked_pow(digits).ok_or_else(too_large)?;
        let numerator = frac.parse::<u128>().map_err(|_| too_large())? * u128::from(multiplier);
        if numerator % denominator != 0 {
            return Err("it is not a whole number of bytes".to_owned());
        }
        let extra = u64::try_from(numerator / denominator).map_err(|_| too_large())?;
        bytes = bytes.checked_add(extra).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Parses a route host pattern: `name`, `name:port`, `[v6]`, `[v6]:port` or `*.suffix`.
pub(super) fn parse_host(text: &str) -> Result<HostMatch, String> {
    let invalid = || format!("route host \"{text}\" is not a valid host name");
    if text.is_empty() {
        return Err("route host must not be empty; leave host out to match any host".to_owned());
    }
    let lower = text.to_ascii_lowercase();
    let host = crate::host::strip_port(&lower);
    if let Some(suffix) = host.strip_prefix("*.") {
        if suffix.contains('*') || !is_dns_name(suffix) {
            return Err(wildcard_error(text));
        }
        return Ok(HostMatch::Wildcard(format!(".{suffix}")));
    }
    if host.contains('*') {
        return Err(wildcard_error(text));
    }
    let bracketed_v6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
    if bracketed_v6 || is_dns_name(host) {
        Ok(HostMatch::Exact(host.to_owned()))
    } else {
        Err(invalid())
    }
}

fn wildcard_error(text: &str) -> String {
    format!(
        "route host \"{text}\" is invalid: a wildcard is only allowed as a leading \"*.\" \
         followed by a domain, e.g. \"*.example.com\""
    )
}

/// Dot-separated non-empty labels of ASCII letters, digits, `-` and `_`.
pub(super) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Pool and backend names: `[A-Za-z0-9_.-]+`.
pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::parse_size;
    use crate::config::test_support::*;

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
}
