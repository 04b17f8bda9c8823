//! Serde types that mirror the TOML file exactly. Values are `Spanned` so that validation can
//! point at them; tables are [`Node`]s because TOML tables that are only implied by a
//! sub-table header (`[[pools.push.backends]]` without `[pools.push]`) have no span.
//!
//! These types never leave [`crate::config`]: validation turns them into the typed model.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub server: Option<Node<Server>>,
    pub admin: Option<Node<Admin>>,
    pub pools: Option<BTreeMap<Spanned<String>, Node<Pool>>>,
    pub routes: Option<Vec<Node<Route>>>,
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
    pub tls: Option<Node<Tls>>,
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Pool {
    pub balance: Option<Spanned<String>>,
    pub hash_header: Option<Spanned<String>>,
    pub slow_start: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub probe: Option<Node<Probe>>,
    pub guard: Option<Node<Guard>>,
    pub upstream_tls: Option<Node<UpstreamTls>>,
    pub backends: Option<Vec<Node<Backend>>>,
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

// The protocol between `toml` and `serde_spanned` (serde_spanned 0.6, toml 0.8).
const SPAN_NAME: &str = "$__serde_spanned_private_Spanned";
const SPAN_START: &str = "$__serde_spanned_private_start";
const SPAN_END: &str = "$__serde_spanned_private_end";
const SPAN_VALUE: &str = "$__serde_spanned_private_value";
const SPAN_FIELDS: &[&str] = &[SPAN_START, SPAN_END, SPAN_VALUE];

/// A table with its span when the document has one (like `toml::Spanned`, which instead
/// fails on tables that are only implied by a sub-table header or a dotted key).
pub(super) struct Node<T> {
    pub span: Option<Range<usize>>,
    pub value: T,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Node<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPAN_NAME, SPAN_FIELDS, NodeVisitor(PhantomData))
    }
}

struct NodeVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for NodeVisitor<T> {
    type Value = Node<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<T>, A::Error> {
        let first: Option<String> = map.next_key()?;
        if first.as_deref() != Some(SPAN_START) {
            // No span: this is the table itself; hand it on with its first key put back.
            let value = T::deserialize(de::value::MapAccessDeserializer::new(Prepend {
                first,
                map,
            }))?;
            return Ok(Node { span: None, value });
        }
        let start: usize = map.next_value()?;
        let (mut end, mut value) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                SPAN_END => end = Some(map.next_value::<usize>()?),
                SPAN_VALUE => value = Some(map.next_value::<T>()?),
                other => return Err(de::Error::unknown_field(other, SPAN_FIELDS)),
            }
        }
        let end = end.ok_or_else(|| de::Error::missing_field(SPAN_END))?;
        let value = value.ok_or_else(|| de::Error::missing_field(SPAN_VALUE))?;
        Ok(Node {
            span: Some(start..end),
            value,
        })
    }
}

/// A map with one already-read key put back in front.
struct Prepend<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Prepend<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}
