//! `[[pools.NAME.backends]]`: the workers of a pool, with `host:port` addresses resolved at
//! load.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use super::{span_of, Validator};
use crate::config::syntax::{is_dns_name, is_valid_name};
use crate::config::{limits, raw, BackendConfig};

impl Validator<'_> {
    /// `[[pools.NAME.backends]]`: names unique, addresses unique and resolved, weights in range.
    /// A pool needs at least one, unless it `discovers` its backends (has a discover source,
    /// valid or not: an invalid one has its own error).
    pub(super) fn backends(
        &mut self,
        pool: &str,
        nodes: &[Spanned<raw::Backend>],
        pool_span: Option<Range<usize>>,
        discovers: bool,
    ) -> Vec<BackendConfig> {
        if nodes.is_empty() && !discovers {
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
            let span = span_of(node);
            let b = node.get_ref();
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
            let weight = self.int_in(
                &format!("weight of {label} in pool \"{pool}\""),
                b.weight.as_ref(),
                1,
                limits::WEIGHT,
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
        let mut resolved: Vec<SocketAddr> = match self.lookup.lookup(host, port) {
            Ok(addrs) => addrs,
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
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::config::test_support::*;

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
}
