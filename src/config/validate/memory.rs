//! `[pools.NAME.guard]`, the keys of the guard's credential memories: `credential`,
//! `remember_ttl`, `remember_max`, `accepted_ttl`, `accepted_max`.

use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::{span_of, Validator, Zero};
use crate::config::{raw, CredentialSource, MemoryConfig};

/// Entries a memory may hold at most: 16 bytes each, so 160 MiB per memory and pool.
const MAX_ENTRIES: i64 = 10_000_000;

impl Validator<'_> {
    /// The memory keys of `[pools.NAME.guard]` `g`, defaults where absent.
    pub(super) fn guard_memory(&mut self, pool: &str, g: &raw::Guard) -> MemoryConfig {
        let name = |key: &str| format!("pools.{pool}.guard.{key}");
        let credential = match &g.credential {
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|entry| self.credential_source(&name("credential"), entry))
                .collect(),
            None => vec![
                CredentialSource::Header(http::header::AUTHORIZATION),
                CredentialSource::Query("api_key".to_owned()),
            ],
        };
        MemoryConfig {
            credential,
            remember_ttl: self.memory_ttl(
                &name("remember_ttl"),
                g.remember_ttl.as_ref(),
                Duration::from_secs(60),
            ),
            remember_max: self.int(
                &name("remember_max"),
                g.remember_max.as_ref(),
                100_000,
                0,
                Some(MAX_ENTRIES),
            ),
            accepted_ttl: self.memory_ttl(
                &name("accepted_ttl"),
                g.accepted_ttl.as_ref(),
                Duration::from_secs(600),
            ),
            accepted_max: self.int(
                &name("accepted_max"),
                g.accepted_max.as_ref(),
                100_000,
                0,
                Some(MAX_ENTRIES),
            ),
        }
    }

    /// One `credential` entry: `header:NAME` or `query:NAME`.
    fn credential_source(
        &mut self,
        key: &str,
        entry: &Spanned<String>,
    ) -> Option<CredentialSource> {
        let text = entry.get_ref();
        let parsed = match text.split_once(':') {
            Some(("header", header)) => HeaderName::from_bytes(header.as_bytes())
                .ok()
                .map(CredentialSource::Header)
                .ok_or_else(|| format!("\"{header}\" is not a valid HTTP header name")),
            Some(("query", "")) => Err("the query parameter name is empty".to_owned()),
            Some(("query", param)) => Ok(CredentialSource::Query(param.to_owned())),
            _ => Err("must be \"header:NAME\" or \"query:NAME\"".to_owned()),
        };
        parsed
            .map_err(|why| self.error(span_of(entry), format!("{key} entry \"{text}\": {why}")))
            .ok()
    }

    /// A memory's TTL: whole seconds are what it keeps, so at least one.
    fn memory_ttl(
        &mut self,
        key: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let ttl = self
            .duration(key, value, default, Zero::Rejected)
            .unwrap_or(default);
        if ttl < Duration::from_secs(1) {
            self.error(
                value.and_then(span_of),
                format!(
                    "{key} must be at least 1s (got {})",
                    humantime::format_duration(ttl)
                ),
            );
            return default;
        }
        ttl
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;
    use crate::config::CredentialSource;

    #[test]
    fn memory_defaults() {
        let memory = &ok(POOL).pools[0].guard.memory;
        assert_eq!(
            memory.credential,
            vec![
                CredentialSource::Header(http::header::AUTHORIZATION),
                CredentialSource::Query("api_key".into())
            ]
        );
        assert_eq!(memory.remember_ttl, Duration::from_secs(60));
        assert_eq!(memory.remember_max, 100_000);
        assert_eq!(memory.accepted_ttl, Duration::from_secs(600));
        assert_eq!(memory.accepted_max, 100_000);
    }

    #[test]
    fn credential_sources_are_read_in_order() {
        let config = ok(&format!(
            "[pools.push.guard]\ncredential = [\"query:key\", \"header:X-Api-Key\"]\n\
             remember_max = 0\naccepted_ttl = \"1h\"\n{POOL}"
        ));
        let memory = &config.pools[0].guard.memory;
        assert_eq!(
            memory.credential,
            vec![
                CredentialSource::Query("key".into()),
                CredentialSource::Header(http::HeaderName::from_static("x-api-key"))
            ]
        );
        assert_eq!(memory.credential[1].to_string(), "header:x-api-key");
        assert_eq!(memory.remember_max, 0);
        assert_eq!(memory.accepted_ttl, Duration::from_secs(3600));
        let none = ok(&format!("[pools.push.guard]\ncredential = []\n{POOL}"));
        assert!(none.pools[0].guard.memory.credential.is_empty());
    }

    #[test]
    fn bad_credential_sources_are_pointed_at() {
        let errors = errors(&format!(
            "[pools.push.guard]\ncredential = [\"cookie:sid\", \"header:x key\", \"query:\"]\n{POOL}"
        ));
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.line, e.col, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    2,
                    15,
                    "pools.push.guard.credential entry \"cookie:sid\": must be \"header:NAME\" or \"query:NAME\""
                ),
                (
                    2,
                    29,
                    "pools.push.guard.credential entry \"header:x key\": \"x key\" is not a valid HTTP header name"
                ),
                (
                    2,
                    45,
                    "pools.push.guard.credential entry \"query:\": the query parameter name is empty"
                ),
            ]
        );
    }

    #[test]
    fn memory_limits() {
        assert_pool_error(
            "[pools.push.guard]\nremember_ttl = \"500ms\"\n",
            2,
            16,
            "pools.push.guard.remember_ttl must be at least 1s (got 500ms)",
        );
        assert_pool_error(
            "[pools.push.guard]\naccepted_ttl = \"0s\"\n",
            2,
            16,
            "pools.push.guard.accepted_ttl must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.guard]\nremember_max = -1\n",
            2,
            16,
            "pools.push.guard.remember_max must be between 0 and 10000000 (got -1)",
        );
        assert_pool_error(
            "[pools.push.guard]\naccepted_max = 10000001\n",
            2,
            16,
            "pools.push.guard.accepted_max must be at most 10000000 (got 10000001)",
        );
    }
}
