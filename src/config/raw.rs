//! Serde types that mirror the TOML file exactly. Values and tables are [`Spanned`] so that
//! validation can point at them. A table that is only implied by a sub-table header
//! (`[[pools.push.backends]]` without `[pools.push]`) or by a dotted key (`tls.listen = ...`)
//! has the span of its name in that header or key.
//!
//! These types never leave [`crate::config`]: validation turns them into the typed model.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub server: Option<Spanned<Server>>,
    pub admin: Option<Spanned<Admin>>,
    pub pools: Option<BTreeMap<Spanned<String>, Spanned<Pool>>>,
    pub routes: Option<Vec<Spanned<Route>>>,
}

/// A list of `IP:port` strings.
pub(super) type Addrs = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Server {
    pub listen: Option<Addrs>,
    pub worker_threads: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub max_request_body: Option<Spanned<Size>>,
    pub max_connections: Option<Spanned<i64>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub access_log: Option<Spanned<AccessLog>>,
    pub tls: Option<Spanned<Tls>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AccessLog {
    pub enabled: Option<Spanned<bool>>,
    pub path: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Tls {
    pub listen: Option<Addrs>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Admin {
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub allowed_hosts: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Pool {
    pub balance: Option<Spanned<String>>,
    pub hash_header: Option<Spanned<String>>,
    pub slow_start: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub probe: Option<Spanned<Probe>>,
    pub guard: Option<Spanned<Guard>>,
    pub upstream_tls: Option<Spanned<UpstreamTls>>,
    pub backends: Option<Vec<Spanned<Backend>>>,
    pub discover: Option<Vec<Spanned<Discover>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Probe {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub contract: Option<Spanned<String>>,
    pub max_generation_lag: Option<Spanned<i64>>,
    pub min_key_ratio: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Guard {
    pub statuses: Option<Spanned<Vec<Spanned<i64>>>>,
    pub max_replay_body: Option<Spanned<Size>>,
    pub eject_after: Option<Spanned<i64>>,
    pub eject_window: Option<Spanned<String>>,
    pub consecutive_connect_failures: Option<Spanned<i64>>,
    pub consecutive_5xx: Option<Spanned<i64>>,
    pub max_ejection_percent: Option<Spanned<i64>>,
    pub retry_budget_ratio: Option<Spanned<f64>>,
    pub retry_budget_min_per_sec: Option<Spanned<i64>>,
    pub retry_budget_window: Option<Spanned<String>>,
    pub credential: Option<Spanned<Vec<Spanned<String>>>>,
    pub remember_ttl: Option<Spanned<String>>,
    pub remember_max: Option<Spanned<i64>>,
    pub accepted_ttl: Option<Spanned<String>>,
    pub accepted_max: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct UpstreamTls {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Backend {
    pub name: Option<Spanned<String>>,
    pub addr: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Discover {
    pub name: Option<Spanned<String>>,
    pub dns: Option<Spanned<String>>,
    pub srv: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub resolver: Option<Spanned<String>>,
    pub weight: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Route {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub pool: Option<Spanned<String>>,
}

/// A size: a string such as `"8MiB"`, or a bare integer of bytes.
pub(super) enum Size {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"8MiB\" or an integer number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                Ok(Size::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                i64::try_from(v)
                    .map(Size::Bytes)
                    .map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}
