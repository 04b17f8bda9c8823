//! `[[routes]]`: which pool serves a request, by host and path prefix.

use toml::Spanned;

use super::{span_of, Validator};
use crate::config::syntax::parse_host;
use crate::config::{raw, PoolConfig, RouteConfig};

impl Validator<'_> {
    /// `[[routes]]` against the validated `pools`; with no routes and one pool, a catch-all.
    pub(super) fn routes(
        &mut self,
        nodes: &[Spanned<raw::Route>],
        pools: &[PoolConfig],
    ) -> Vec<RouteConfig> {
        if nodes.is_empty() {
            return match pools {
                [] => Vec::new(),
                [pool] => vec![RouteConfig {
                    host: None,
                    path_prefix: "/".to_owned(),
                    pool: pool.name.clone(),
                }],
                _ => {
                    self.error(None, "routes are required when there is more than one pool");
                    Vec::new()
                }
            };
        }
        // Named in each error about an unknown pool: a few, so that many routes to unknown
        // pools in a file with many pools do not print every pool name each time.
        const NAMED: usize = 10;
        let known = match pools.len() {
            0 => "none".to_owned(),
            n => {
                let names: Vec<&str> = pools.iter().take(NAMED).map(|p| p.name.as_str()).collect();
                let more = n.saturating_sub(NAMED);
                if more > 0 {
                    format!("{} and {more} more", names.join(", "))
                } else {
                    names.join(", ")
                }
            }
        };
        let mut routes = Vec::new();
        for node in nodes {
            let r = node.get_ref();
            let host = r.host.as_ref().and_then(|value| {
                parse_host(value.get_ref())
                    .map_err(|message| self.error(span_of(value), message))
                    .ok()
            });
            let path_prefix = match &r.path_prefix {
                Some(value) => {
                    if !value.get_ref().starts_with('/') {
                        self.error(
                            span_of(value),
                            format!(
                                "route path_prefix \"{}\" must start with '/'",
                                value.get_ref()
                            ),
                        );
                    }
                    value.get_ref().clone()
                }
                None => "/".to_owned(),
            };
            let pool = match &r.pool {
                Some(value) => {
                    let name = value.get_ref();
                    // Pools are sorted by name (validation builds them from a sorted map).
                    if pools
                        .binary_search_by(|p| p.name.as_str().cmp(name))
                        .is_err()
                    {
                        self.error(
                            span_of(value),
                            format!(
                                "pool \"{name}\" named by route does not exist (pools: {known})"
                            ),
                        );
                    }
                    name.clone()
                }
                None => {
                    self.error(span_of(node), "route has no pool; set pool = \"NAME\"");
                    String::new()
                }
            };
            routes.push(RouteConfig {
                host,
                path_prefix,
                pool,
            });
        }
        routes
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::HostMatch;

    #[test]
    fn route_to_unknown_pool() {
        assert_error(
            &format!("{POOL}\n[[routes]]\npool = \"pushh\"\n"),
            6,
            8,
            "pool \"pushh\" named by route does not exist (pools: push)",
        );
    }

    #[test]
    fn an_unknown_pool_error_names_a_few_pools_not_all() {
        let mut text = String::new();
        for i in 0..12 {
            text.push_str(&format!(
                "[pools.p{i:02}]\nbackends = [{{name = \"w\", addr = \"10.0.0.{i}:1\"}}]\n"
            ));
        }
        text.push_str("[[routes]]\npool = \"p99\"\n");
        assert_error(
            &text,
            26,
            8,
            "pool \"p99\" named by route does not exist (pools: p00, p01, p02, p03, p04, p05, \
             p06, p07, p08, p09 and 2 more)",
        );
    }

    #[test]
    fn route_without_pool() {
        assert_error(
            &format!("{POOL}\n[[routes]]\npath_prefix = \"/\"\n"),
            5,
            1,
            "route has no pool",
        );
    }

    #[test]
    fn route_hosts() {
        for host in ["*", "a.*.b", "*.", "**.example.com", "*example.com"] {
            assert_error(
                &format!("{POOL}[[routes]]\nhost = \"{host}\"\npool = \"push\"\n"),
                5,
                8,
                "a wildcard is only allowed as a leading \"*.\"",
            );
        }
        for host in ["a b", "", "example..com", "[::1", "host:port"] {
            assert_error(
                &format!("{POOL}[[routes]]\nhost = \"{host}\"\npool = \"push\"\n"),
                5,
                8,
                "route host",
            );
        }
        let cases = [
            (
                "Push.Example.COM",
                HostMatch::Exact("push.example.com".to_owned()),
            ),
            (
                "push.example.com:8443",
                HostMatch::Exact("push.example.com".to_owned()),
            ),
            (
                "*.Example.com:443",
                HostMatch::Wildcard(".example.com".to_owned()),
            ),
            ("[::1]:8080", HostMatch::Exact("[::1]".to_owned())),
            ("10.0.0.1", HostMatch::Exact("10.0.0.1".to_owned())),
        ];
        for (host, expected) in cases {
            let config = ok(&format!(
                "{POOL}[[routes]]\nhost = \"{host}\"\npool = \"push\"\n"
            ));
            assert_eq!(config.routes[0].host, Some(expected), "{host}");
        }
    }

    #[test]
    fn route_path_prefix_must_start_with_slash() {
        assert_error(
            &format!("{POOL}[[routes]]\npath_prefix = \"api\"\npool = \"push\"\n"),
            5,
            15,
            "route path_prefix \"api\" must start with '/'",
        );
    }

    #[test]
    fn several_pools_need_routes() {
        assert_error(
            &format!("{POOL}[pools.other]\nbackends = [{{name = \"o\", addr = \"10.0.0.2:1\"}}]\n"),
            1,
            1,
            "routes are required when there is more than one pool",
        );
    }
}
