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
        let known = if pools.is_empty() {
            "none".to_owned()
        } else {
            pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
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
                    if !pools.iter().any(|p| &p.name == name) {
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
