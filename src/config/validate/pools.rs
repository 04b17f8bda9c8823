//! `[pools.NAME]`: the pool table itself; its sub-tables have files of their own.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::{span_of, Validator, Zero};
use crate::config::syntax::is_valid_name;
use crate::config::{limits, raw, Balance, PoolConfig};

impl Validator<'_> {
    /// `[pools.*]`, at least one, in name order.
    pub(super) fn pools(
        &mut self,
        pools: Option<&BTreeMap<Spanned<String>, Spanned<raw::Pool>>>,
    ) -> Vec<PoolConfig> {
        let Some(pools) = pools.filter(|p| !p.is_empty()) else {
            self.error(
                None,
                "no pools are configured; add a [pools.NAME] table with at least one \
                 [[pools.NAME.backends]]",
            );
            return Vec::new();
        };
        pools
            .iter()
            .map(|(name, node)| self.pool(name, node))
            .collect()
    }

    fn pool(&mut self, key: &Spanned<String>, node: &Spanned<raw::Pool>) -> PoolConfig {
        let name = key.get_ref().as_str();
        let key_span = span_of(key);
        if name.is_empty() {
            self.error(key_span.clone(), "pool name must not be empty");
        } else if !is_valid_name(name) {
            self.error(
                key_span.clone(),
                format!("pool name \"{name}\" may only use letters, digits, '_', '.' and '-'"),
            );
        }
        let p = node.get_ref();
        let balance = self.choice(
            &format!("pools.{name}.balance"),
            p.balance.as_ref(),
            Balance::P2c,
            &Balance::ALL,
        );
        let hash_header = match &p.hash_header {
            Some(value) => HeaderName::from_bytes(value.get_ref().to_ascii_lowercase().as_bytes())
                .unwrap_or_else(|_| {
                    self.error(
                        span_of(value),
                        format!(
                            "pools.{name}.hash_header \"{}\" is not a valid HTTP header name",
                            value.get_ref()
                        ),
                    );
                    http::header::AUTHORIZATION
                }),
            None => http::header::AUTHORIZATION,
        };
        let slow_start = self
            .duration(
                &format!("pools.{name}.slow_start"),
                p.slow_start.as_ref(),
                Duration::from_secs(10),
                Zero::Allowed,
            )
            .unwrap_or_default();
        let retries = self.int_in(
            &format!("pools.{name}.retries"),
            p.retries.as_ref(),
            2,
            limits::RETRIES,
        );
        let probe = self.probe(name, p.probe.as_ref());
        let guard = self.guard(name, p.guard.as_ref());
        let upstream_tls = p
            .upstream_tls
            .as_ref()
            .and_then(|t| self.upstream_tls(name, t));
        let discover = self.discover(name, p.discover.as_deref().unwrap_or_default());
        let backends = self.backends(
            name,
            p.backends.as_deref().unwrap_or_default(),
            key_span,
            p.discover.as_ref().is_some_and(|d| !d.is_empty()),
        );
        PoolConfig {
            name: name.to_owned(),
            balance,
            hash_header,
            slow_start,
            retries,
            probe,
            guard,
            upstream_tls,
            backends,
            discover,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::{Balance, Contract};

    #[test]
    fn at_least_one_pool() {
        assert_error(
            "[server]\nworker_threads = 1\n",
            1,
            1,
            "no pools are configured",
        );
    }

    #[test]
    fn bad_pool_names() {
        assert_error(
            "[pools.\"a b\"]\nbackends = [{name = \"w\", addr = \"10.0.0.1:1\"}]\n",
            1,
            8,
            "pool name \"a b\" may only use letters, digits",
        );
        assert_error(
            "[pools.\"\"]\nbackends = [{name = \"w\", addr = \"10.0.0.1:1\"}]\n",
            1,
            8,
            "pool name must not be empty",
        );
    }

    #[test]
    fn hash_header_must_be_a_header_name() {
        assert_pool_error(
            "[pools.push]\nhash_header = \"x account\"\n",
            2,
            15,
            "pools.push.hash_header \"x account\" is not a valid HTTP header name",
        );
    }

    #[test]
    fn balance_and_contract_must_be_known() {
        assert_pool_error(
            "[pools.push]\nbalance = \"random\"\n",
            2,
            11,
            "pools.push.balance \"random\" is not one of \"p2c\", \"round_robin\", \"hash\"",
        );
        assert_pool_error(
            "[pools.push.probe]\ncontract = \"json\"\n",
            2,
            12,
            "pools.push.probe.contract \"json\" is not one of \"key-sync\", \"status\"",
        );
    }

    #[test]
    fn every_balance_and_contract_is_read_back_from_its_own_spelling() {
        for balance in Balance::ALL {
            let config = ok(&format!("[pools.push]\nbalance = \"{balance}\"\n{POOL}"));
            assert_eq!(config.pools[0].balance, balance, "{}", balance.as_str());
        }
        for contract in Contract::ALL {
            let config = ok(&format!(
                "[pools.push.probe]\ncontract = \"{contract}\"\n{POOL}"
            ));
            assert_eq!(
                config.pools[0].probe.contract,
                contract,
                "{}",
                contract.as_str()
            );
        }
        assert_eq!(
            Balance::ALL.map(Balance::as_str),
            ["p2c", "round_robin", "hash"]
        );
        assert_eq!(Contract::ALL.map(Contract::as_str), ["key-sync", "status"]);
    }
}
