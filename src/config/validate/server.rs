//! `[server]`: the plain listeners, timeouts and limits, and the check that no two
//! listeners (proxy, TLS, admin) share an address.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::{span_of, Listener, Validator, Zero};
use crate::config::{limits, raw, ServerConfig};

impl Validator<'_> {
    /// `[server]` (and `[server.tls]`), with every listener it declares.
    pub(super) fn server(
        &mut self,
        node: Option<&Spanned<raw::Server>>,
    ) -> (ServerConfig, Vec<Listener>) {
        let absent = raw::Server::default();
        let s = node.map_or(&absent, Spanned::get_ref);
        let mut listeners = Vec::new();
        let listen = match &s.listen {
            Some(list) => self.addrs("server.listen", list, &mut listeners),
            None => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
                listeners.push(Listener {
                    addr,
                    key: "server.listen",
                    span: None,
                });
                vec![addr]
            }
        };
        let tls = s.tls.as_ref().map(|t| self.tls(t, &mut listeners));
        if let (Some(list), None) = (&s.listen, &tls) {
            if list.get_ref().is_empty() {
                self.error(
                    span_of(list),
                    "server.listen is empty and there is no [server.tls]; at least one listener \
                     is required",
                );
            }
        }
        let secs = Duration::from_secs;
        let server = ServerConfig {
            listen,
            worker_threads: self.int_in(
                "server.worker_threads",
                s.worker_threads.as_ref(),
                0,
                limits::WORKER_THREADS,
            ),
            header_read_timeout: self
                .duration(
                    "server.header_read_timeout",
                    s.header_read_timeout.as_ref(),
                    secs(10),
                    Zero::Rejected,
                )
                .unwrap_or(secs(10)),
            request_timeout: self
                .duration(
                    "server.request_timeout",
                    s.request_timeout.as_ref(),
                    secs(30),
                    Zero::Rejected,
                )
                .unwrap_or(secs(30)),
            max_request_body: self.size(
                "server.max_request_body",
                s.max_request_body.as_ref(),
                8 << 20,
                limits::MAX_REQUEST_BODY,
            ),
            max_connections: self.int_in(
                "server.max_connections",
                s.max_connections.as_ref(),
                10_000,
                limits::MAX_CONNECTIONS,
            ),
            drain_timeout: self
                .duration(
                    "server.drain_timeout",
                    s.drain_timeout.as_ref(),
                    secs(30),
                    Zero::Rejected,
                )
                .unwrap_or(secs(30)),
            idle_timeout: self
                .duration(
                    "server.idle_timeout",
                    s.idle_timeout.as_ref(),
                    secs(75),
                    Zero::Rejected,
                )
                .unwrap_or(secs(75)),
            access_log: self.access_log(s.access_log.as_ref()),
            tls,
        };
        (server, listeners)
    }

    /// A list of listener addresses; each valid one also joins `out`.
    pub(super) fn addrs(
        &mut self,
        key: &'static str,
        value: &raw::Addrs,
        out: &mut Vec<Listener>,
    ) -> Vec<SocketAddr> {
        let mut addrs = Vec::new();
        for entry in value.get_ref() {
            if let Some(addr) = self.addr(&format!("{key} address"), entry) {
                addrs.push(addr);
                out.push(Listener {
                    addr,
                    key,
                    span: span_of(entry),
                });
            }
        }
        addrs
    }

    /// Two listeners on one address (port 0 excepted) cannot both bind. The error points at
    /// the later one, or at the earlier one when the later is a default.
    pub(super) fn distinct_listeners(&mut self, listeners: &[Listener]) {
        let mut seen: HashMap<SocketAddr, &Listener> = HashMap::new();
        for later in listeners.iter().filter(|l| l.addr.port() != 0) {
            let Some(earlier) = seen.get(&later.addr).copied() else {
                seen.insert(later.addr, later);
                continue;
            };
            let (at, other) = if later.span.is_some() {
                (later, earlier)
            } else {
                (earlier, later)
            };
            self.error(
                at.span.clone(),
                format!(
                    "{} address {} is already used by {}",
                    at.key, at.addr, other.key
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn bad_listen_address() {
        assert_pool_error(
            "[server]\nlisten = [\"127.0.0.1:80\", \"nope\"]\n",
            2,
            27,
            "server.listen address \"nope\" is not IP:port",
        );
    }

    #[test]
    fn no_listener_at_all() {
        assert_pool_error("[server]\nlisten = []\n", 2, 10, "at least one listener");
    }

    #[test]
    fn zero_timeouts() {
        assert_pool_error(
            "[server]\nrequest_timeout = \"0s\"\n",
            2,
            19,
            "server.request_timeout must be greater than 0",
        );
        assert_pool_error(
            "[server]\nheader_read_timeout = \"0ms\"\n",
            2,
            23,
            "server.header_read_timeout must be greater than 0",
        );
        assert_pool_error(
            "[server]\ndrain_timeout = \"0s\"\n",
            2,
            17,
            "server.drain_timeout must be greater than 0",
        );
    }

    #[test]
    fn bad_duration() {
        assert_pool_error(
            "[server]\ndrain_timeout = \"5 parsecs\"\n",
            2,
            17,
            "server.drain_timeout \"5 parsecs\" is not a duration",
        );
        assert_pool_error(
            "[server]\ndrain_timeout = \"30\"\n",
            2,
            17,
            "is not a duration",
        );
    }

    #[test]
    fn bad_sizes() {
        assert_pool_error(
            "[server]\nmax_request_body = \"8XB\"\n",
            2,
            20,
            "server.max_request_body \"8XB\" is not a size (unknown unit \"XB\")",
        );
        assert_pool_error(
            "[server]\nmax_request_body = 0\n",
            2,
            20,
            "server.max_request_body must be greater than 0",
        );
        assert_pool_error(
            "[server]\nmax_request_body = -5\n",
            2,
            20,
            "server.max_request_body must not be negative",
        );
    }

    #[test]
    fn bad_connection_and_thread_counts() {
        assert_pool_error(
            "[server]\nmax_connections = 0\n",
            2,
            19,
            "server.max_connections must be between 1 and 1000000 (got 0)",
        );
        assert_pool_error(
            "[server]\nworker_threads = 2000\n",
            2,
            18,
            "server.worker_threads must be at most 1024 (got 2000)",
        );
    }

    #[test]
    fn duplicate_listener_address() {
        assert_pool_error(
            "[server]\nlisten = [\"127.0.0.1:9901\"]\n",
            2,
            11,
            "server.listen address 127.0.0.1:9901 is already used by admin.listen",
        );
        // Port 0 (an ephemeral port each) may repeat.
        ok(&format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n{POOL}"
        ));
    }
}
