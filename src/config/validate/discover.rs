//! `[[pools.NAME.discover]]`: DNS sources of backends. Nothing is resolved here: a name that
//! does not resolve is no config error for a source (it has no addresses yet, and says so in
//! the admin API); only the shape of each key is checked.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::{span_of, Validator, Zero};
use crate::config::syntax::{is_dns_name, is_valid_name};
use crate::config::{raw, DiscoverConfig, DiscoverQuery};

/// Default time between two resolutions of a source.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest interval accepted: faster re-resolution only loads the DNS servers.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The source name that stands for the config file's own backends in the admin API.
const STATIC: &str = "static";

impl Validator<'_> {
    /// `[[pools.NAME.discover]]`: one of `dns` / `srv` each, names unique in the pool.
    pub(super) fn discover(
        &mut self,
        pool: &str,
        nodes: &[Spanned<raw::Discover>],
    ) -> Vec<DiscoverConfig> {
        let mut names: HashSet<String> = HashSet::new();
        let mut sources = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            let label = format!("discover source #{} in pool \"{pool}\"", index + 1);
            let d = node.get_ref();
            let query = match (&d.dns, &d.srv) {
                (Some(dns), None) => self.dns_query(&label, dns),
                (None, Some(srv)) => self.srv_query(&label, srv),
                (Some(_), Some(srv)) => {
                    self.error(
                        span_of(srv),
                        format!("{label} has both dns and srv; a source asks one of them"),
                    );
                    None
                }
                (None, None) => {
                    self.error(
                        span_of(node),
                        format!(
                            "{label} asks nothing; set dns = \"host:port\" (A/AAAA records) or \
                             srv = \"_service._proto.name\" (SRV records)"
                        ),
                    );
                    None
                }
            };
            let interval = self.duration(
                &format!("interval of {label}"),
                d.interval.as_ref(),
                DEFAULT_INTERVAL,
                Zero::Rejected,
            );
            if let (Some(interval), Some(value)) = (interval, &d.interval) {
                if interval < MIN_INTERVAL {
                    self.error(
                        span_of(value),
                        format!("interval of {label} must be at least 100ms"),
                    );
                }
            }
            let resolver = d.resolver.as_ref().and_then(|r| self.resolver(&label, r));
            let weight = d
                .weight
                .as_ref()
                .map(|w| self.int(&format!("weight of {label}"), Some(w), 1, 1, Some(1000)));
            let name = match (&d.name, &query) {
                (Some(name), _) => {
                    let n = name.get_ref();
                    if !is_valid_name(n) {
                        self.error(
                            span_of(name),
                            format!(
                                "name \"{n}\" of {label} may only use letters, digits, '_', '.' \
                                 and '-'"
                            ),
                        );
                    }
                    Some((n.clone(), span_of(name)))
                }
                (None, Some(q)) => Some((default_name(q), span_of(node))),
                (None, None) => None,
            };
            let Some((name, name_span)) = name else {
                continue;
            };
            if name == STATIC {
                self.error(
                    name_span,
                    format!(
                        "{label} may not be named \"static\" (the admin API's name for the \
                         backends of the file); set name = \"...\""
                    ),
                );
            } else if !names.insert(name.clone()) {
                self.error(
                    name_span,
                    format!(
                        "{label} is named \"{name}\" like an earlier source of the pool; set \
                         name = \"...\" to tell them apart"
                    ),
                );
            }
            if let (Some(query), Some(interval)) = (query, interval) {
                sources.push(DiscoverConfig {
                    name,
                    query,
                    interval,
                    resolver,
                    weight,
                });
            }
        }
        sources
    }

    /// `dns = "host:port"`.
    fn dns_query(&mut self, label: &str, value: &Spanned<String>) -> Option<DiscoverQuery> {
        let text = value.get_ref();
        let split = text
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
        let problem = match split {
            None => "is not host:port, e.g. \"workers.push.svc.cluster.local:8080\"",
            Some((_, 0)) => "has port 0",
            Some((host, _)) if is_address(host) => {
                "is an address, not a name; a fixed address is a [[pools.NAME.backends]] entry"
            }
            Some((host, _)) if !is_dns_name(host.strip_suffix('.').unwrap_or(host)) => {
                "is not a valid DNS name and port"
            }
            Some((host, port)) => {
                return Some(DiscoverQuery::Dns {
                    host: host.to_owned(),
                    port,
                })
            }
        };
        self.error(
            span_of(value),
            format!("dns \"{text}\" of {label} {problem}"),
        );
        None
    }

    /// `srv = "_service._proto.name"`.
    fn srv_query(&mut self, label: &str, value: &Spanned<String>) -> Option<DiscoverQuery> {
        let text = value.get_ref();
        if is_dns_name(text.strip_suffix('.').unwrap_or(text)) && !is_address(text) {
            return Some(DiscoverQuery::Srv { name: text.clone() });
        }
        self.error(
            span_of(value),
            format!(
                "srv \"{text}\" of {label} is not a DNS name, e.g. \
                 \"_push._tcp.workers.push.svc.cluster.local\" (SRV records carry the ports)"
            ),
        );
        None
    }

    /// `resolver = "IP:port"`, or `"IP"` for port 53.
    fn resolver(&mut self, label: &str, value: &Spanned<String>) -> Option<SocketAddr> {
        let text = value.get_ref();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Some(addr);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, 53));
        }
        self.error(
            span_of(value),
            format!("resolver \"{text}\" of {label} is not IP:port, e.g. \"10.96.0.10:53\""),
        );
        None
    }
}

/// Whether a host is an IP address (an IPv6 one may come bracketed).
fn is_address(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok()
}

/// A source's default name: the DNS name it asks, without port or trailing dot, lower-cased.
/// Derived from the source alone, so adding another source never renames this one (its
/// backends' identities, and so their state, stay).
fn default_name(query: &DiscoverQuery) -> String {
    let name = match query {
        DiscoverQuery::Dns { host, .. } => host,
        DiscoverQuery::Srv { name } => name,
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::DiscoverQuery;

    const DNS: &str = "[[pools.push.discover]]\ndns = \"workers.push.svc:8080\"\n";

    #[test]
    fn a_pool_may_have_only_discover_sources_with_defaults() {
        let config = ok(DNS);
        let pool = &config.pools[0];
        assert!(pool.backends.is_empty());
        let d = &pool.discover[0];
        assert_eq!(d.name, "workers.push.svc");
        assert_eq!(
            d.query,
            DiscoverQuery::Dns {
                host: "workers.push.svc".into(),
                port: 8080
            }
        );
        assert_eq!(d.query.kind(), "dns");
        assert_eq!(d.query.target(), "workers.push.svc:8080");
        assert_eq!(d.interval, Duration::from_secs(5));
        assert_eq!(d.resolver, None);
        assert_eq!(d.weight, None);
    }

    #[test]
    fn every_key_is_read() {
        let config = ok(&format!(
            "{POOL}[[pools.push.discover]]\nname = \"pods\"\nsrv = \"_push._tcp.Workers.test.\"\n\
             interval = \"250ms\"\nresolver = \"127.0.0.1:5353\"\nweight = 7\n\
             [[pools.push.discover]]\ndns = \"a.test:1\"\nresolver = \"::1\"\n"
        ));
        let [srv, dns] = &config.pools[0].discover[..] else {
            panic!("two sources expected")
        };
        assert_eq!(srv.name, "pods");
        assert_eq!(
            srv.query,
            DiscoverQuery::Srv {
                name: "_push._tcp.Workers.test.".into()
            }
        );
        assert_eq!(srv.interval, Duration::from_millis(250));
        assert_eq!(srv.resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(srv.weight, Some(7));
        assert_eq!(dns.name, "a.test");
        assert_eq!(dns.resolver, Some("[::1]:53".parse().unwrap()));
    }

    #[test]
    fn a_srv_source_is_named_after_its_name_without_the_dot() {
        let config = ok("[[pools.push.discover]]\nsrv = \"_push._tcp.Workers.test.\"\n");
        assert_eq!(config.pools[0].discover[0].name, "_push._tcp.workers.test");
    }

    #[test]
    fn a_pool_without_backends_nor_sources_is_refused() {
        assert_error(
            "[pools.push]\nretries = 1\n",
            1,
            8,
            "pool \"push\" has no backends; add at least one [[pools.push.backends]]",
        );
    }

    #[test]
    fn a_source_asks_exactly_one_thing() {
        assert_error(
            "[[pools.push.discover]]\ninterval = \"1s\"\n",
            1,
            1,
            "discover source #1 in pool \"push\" asks nothing",
        );
        assert_error(
            "[[pools.push.discover]]\ndns = \"a.test:1\"\nsrv = \"_x._tcp.a.test\"\n",
            3,
            7,
            "discover source #1 in pool \"push\" has both dns and srv",
        );
    }

    #[test]
    fn dns_is_a_name_and_a_port() {
        for (value, needle) in [
            ("a.test", "is not host:port"),
            ("a.test:0", "has port 0"),
            ("a.test:99999", "is not host:port"),
            ("10.0.0.1:80", "is an address, not a name"),
            ("[::1]:80", "is an address, not a name"),
            ("bad name:80", "is not a valid DNS name and port"),
        ] {
            assert_error(
                &format!("[[pools.push.discover]]\ndns = \"{value}\"\n"),
                2,
                7,
                &format!("dns \"{value}\" of discover source #1 in pool \"push\" {needle}"),
            );
        }
        assert_error(
            "[[pools.push.discover]]\nsrv = \"_x._tcp.a test\"\n",
            2,
            7,
            "srv \"_x._tcp.a test\" of discover source #1 in pool \"push\" is not a DNS name",
        );
    }

    #[test]
    fn interval_resolver_and_weight_ranges() {
        assert_error(
            &format!("{DNS}interval = \"50ms\"\n"),
            3,
            12,
            "interval of discover source #1 in pool \"push\" must be at least 100ms",
        );
        assert_error(
            &format!("{DNS}interval = \"0s\"\n"),
            3,
            12,
            "must be greater than 0",
        );
        assert_error(
            &format!("{DNS}resolver = \"dns.local:53\"\n"),
            3,
            12,
            "resolver \"dns.local:53\" of discover source #1 in pool \"push\" is not IP:port",
        );
        assert_error(
            &format!("{DNS}weight = 0\n"),
            3,
            10,
            "weight of discover source #1 in pool \"push\" must be between 1 and 1000",
        );
    }

    #[test]
    fn source_names_are_unique_valid_and_not_static() {
        assert_error(
            &format!("{DNS}{DNS}"),
            3,
            1,
            "discover source #2 in pool \"push\" is named \"workers.push.svc\" like an earlier \
             source",
        );
        assert_error(
            &format!("{DNS}name = \"static\"\n"),
            3,
            8,
            "may not be named \"static\"",
        );
        assert_error(
            &format!("{DNS}name = \"a/b\"\n"),
            3,
            8,
            "name \"a/b\" of discover source #1 in pool \"push\" may only use letters",
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert_error(&format!("{DNS}ttl = \"1s\"\n"), 3, 1, "unknown field `ttl`");
    }
}
