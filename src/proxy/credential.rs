//! The request's credential as the guard's memories know it: a keyed fingerprint of the
//! account key, found where the pool's `credential` setting says (a header, or a query
//! parameter), never the key itself.
//!
//! What the memories hold and how they forget is `memory.rs`; this file reads and writes them
//! for one request: the accepted-credential memory on every 2xx (a read of one cache line,
//! a write only when the entry is missing or old), the confirmed-answer memory only on
//! guarded answers.

use std::borrow::Cow;

use http::request::Parts;

use super::guard::Recall;
use crate::config::CredentialSource;
use crate::memory::{coarse_now, Fingerprint};
use crate::snapshot::Pool;

/// The fingerprint of the request's credential: the first of `sources` the request carries
/// (an empty value counts as absent), or none.
pub(super) fn fingerprint(sources: &[CredentialSource], parts: &Parts) -> Option<Fingerprint> {
    sources.iter().find_map(|source| match source {
        CredentialSource::Header(name) => parts
            .headers
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| Fingerprint::of(name.as_str(), v.as_bytes())),
        CredentialSource::Query(name) => {
            query_value(parts.uri.query()?, name).map(|v| Fingerprint::of(name, &v))
        }
    })
}

/// The percent-decoded value of the first `name=value` pair of `query` (borrowed when it has
/// no escapes); an empty value counts as absent.
fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, [u8]>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name && !value.is_empty())
            .then(|| percent_encoding::percent_decode_str(value).into())
    })
}

/// A TTL in the tables' whole seconds.
fn secs(ttl: std::time::Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

/// Whether the pool keeps any memory worth a fingerprint: statuses to guard, a place to find
/// credentials, and room in a memory.
pub(super) fn wanted(pool: &Pool) -> bool {
    !pool.guard.statuses.is_empty()
        && !pool.guard.memory.credential.is_empty()
        && (pool.memories.accepted.capacity() > 0 || pool.memories.rejected.capacity() > 0)
}

/// Remembers that `credential` was answered 2xx at the pool's current generation. A hot
/// credential's entry is rewritten at most every eighth of `accepted_ttl`, so its age is
/// counted from its last 2xx within that slack.
#[inline]
pub(super) fn accepted(pool: &Pool, credential: Fingerprint) {
    let ttl = secs(pool.guard.memory.accepted_ttl);
    pool.memories.accepted.insert(
        credential,
        pool.fleet.epoch(),
        coarse_now(),
        ttl,
        (ttl / 8).max(1),
    );
}

/// Remembers that a peer confirmed the guarded answer `status` for `credential`.
pub(super) fn confirmed(pool: &Pool, credential: Fingerprint, status: u16) {
    let ttl = secs(pool.guard.memory.remember_ttl);
    pool.memories.rejected.insert(
        credential.with_status(status),
        pool.fleet.epoch(),
        coarse_now(),
        ttl,
        0,
    );
}

/// What the pool's memories say of `credential` now that a guarded answer `status` came.
pub(super) fn recall(pool: &Pool, credential: Option<Fingerprint>, status: u16) -> Recall {
    let Some(fp) = credential else {
        return Recall::default();
    };
    let (epoch, now, m) = (pool.fleet.epoch(), coarse_now(), &pool.guard.memory);
    Recall {
        remembered: pool.memories.rejected.contains(
            fp.with_status(status),
            epoch,
            now,
            secs(m.remember_ttl),
        ),
        accepted: pool
            .memories
            .accepted
            .contains(fp, epoch, now, secs(m.accepted_ttl)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::get(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn sources() -> Vec<CredentialSource> {
        vec![
            CredentialSource::Header(http::header::AUTHORIZATION),
            CredentialSource::Query("api_key".into()),
        ]
    }

    #[test]
    fn the_first_source_present_is_the_credential() {
        let by_header = fingerprint(
            &sources(),
            &parts("/v1?api_key=k2", &[("authorization", "Bearer k1")]),
        );
        assert_eq!(
            by_header,
            Some(Fingerprint::of("authorization", b"Bearer k1"))
        );
        let by_query = fingerprint(&sources(), &parts("/v1?x=1&api_key=k2&api_key=k3", &[]));
        assert_eq!(by_query, Some(Fingerprint::of("api_key", b"k2")));
        assert_eq!(fingerprint(&sources(), &parts("/v1?x=1", &[])), None);
        assert_eq!(fingerprint(&[], &parts("/v1?api_key=k", &[])), None);
    }

    #[test]
    fn query_values_are_percent_decoded_and_empty_ones_absent() {
        assert_eq!(
            fingerprint(&sources(), &parts("/v1?api_key=a%2Fb", &[])),
            fingerprint(&sources(), &parts("/v1?api_key=a/b", &[]))
        );
        assert_eq!(fingerprint(&sources(), &parts("/v1?api_key=&x", &[])), None);
        assert_eq!(
            fingerprint(
                &sources(),
                &parts("/v1?api_key=k", &[("authorization", "")])
            ),
            Some(Fingerprint::of("api_key", b"k")),
            "an empty header is no credential"
        );
        assert_eq!(query_value("api_keyx=1&api_key", "api_key"), None);
    }
}
