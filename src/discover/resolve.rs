//! One resolution of a discover source with hickory-resolver: A and AAAA records of a name, or
//! SRV records and their targets' addresses, classified into addresses or one [`Failure`].
//!
//! The resolver keeps no cache: a source asks its server every `interval`, so a record TTL
//! longer than that does not hide a change and a shorter one does not speed re-resolution up.
//! With `resolver = "IP:port"` only that server is asked, over UDP, and over TCP when an answer
//! is truncated (a name with hundreds of addresses); `/etc/hosts` is not read. Without it, the
//! system configuration applies: `/etc/resolv.conf` (servers, search domains, ndots) and
//! `/etc/hosts`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use super::{Failure, Found, Outcome};
use crate::config::DiscoverQuery;

/// A resolver for one source: `server`, or the system configuration when `None`. Every query
/// attempt may take `timeout`; a timed-out UDP query is tried once more.
pub(super) fn resolver(
    server: Option<SocketAddr>,
    timeout: Duration,
) -> Result<TokioResolver, Failure> {
    let mut builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut ns.connections {
                connection.port = addr.port();
            }
            let mut builder = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            );
            // The operator named the server: its answers, not this machine's hosts file.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        }
        None => Resolver::builder_tokio().map_err(|e| Failure {
            outcome: Outcome::Error,
            message: format!("cannot read the system resolver configuration: {e}"),
        })?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    options.timeout = timeout;
    options.attempts = 1;
    builder.build().map_err(|e| Failure {
        outcome: Outcome::Error,
        message: format!("cannot build a resolver: {e}"),
    })
}

/// Resolves `query`: its addresses sorted and without duplicates, or why there are none.
pub(super) async fn resolve(
    resolver: &TokioResolver,
    query: &DiscoverQuery,
) -> Result<Vec<Found>, Failure> {
    let mut found = match query {
        DiscoverQuery::Dns { host, port } => {
            let ips = addresses(resolver, host).await.into_result(host)?;
            ips.into_iter()
                .map(|ip| Found {
                    addr: SocketAddr::new(ip, *port),
                    srv_weight: None,
                })
                .collect()
        }
        DiscoverQuery::Srv { name } => srv(resolver, name).await?,
    };
    found.sort();
    found.dedup_by_key(|f| f.addr);
    if found.is_empty() {
        return Err(Failure {
            outcome: Outcome::Empty,
            message: format!("{} has no usable records", query.target()),
        });
    }
    Ok(found)
}

/// What one query of one record type said.
#[derive(Debug)]
enum Said {
    /// Records (possibly none of the type asked, e.g. only a CNAME).
    Records(Lookup),
    /// The name exists but has no record of this type (NOERROR, no answer).
    NoData,
    /// The name does not exist.
    NxDomain,
    /// No usable answer: timeout, SERVFAIL, refused, network error.
    Failed(Failure),
}

/// Classifies a lookup's result.
fn said(result: Result<Lookup, NetError>) -> Said {
    match result {
        Ok(lookup) => Said::Records(lookup),
        Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. }))) => {
            match response_code {
                ResponseCode::NXDomain => Said::NxDomain,
                ResponseCode::NoError => Said::NoData,
                code => Said::Failed(rcode_failure(code)),
            }
        }
        Err(NetError::Dns(DnsError::ResponseCode(code))) => Said::Failed(rcode_failure(code)),
        Err(NetError::Timeout) => Said::Failed(Failure {
            outcome: Outcome::Timeout,
            message: "timeout".into(),
        }),
        Err(e) => Said::Failed(Failure {
            outcome: Outcome::Error,
            message: e.to_string(),
        }),
    }
}

fn rcode_failure(code: ResponseCode) -> Failure {
    Failure {
        outcome: if code == ResponseCode::ServFail {
            Outcome::ServFail
        } else {
            Outcome::Error
        },
        message: code.to_str().to_owned(),
    }
}

/// The addresses of one name, from its A and AAAA answers together.
#[derive(Debug, PartialEq, Eq)]
enum Addresses {
    /// At least one address.
    Some(Vec<IpAddr>),
    /// The name exists and has neither A nor AAAA records.
    None,
    /// The name does not exist.
    NxDomain,
    /// One of the two queries gave no usable answer.
    Failed(Failure),
}

impl Addresses {
    /// The addresses, or the failure a source reports for `name`.
    fn into_result(self, name: &str) -> Result<Vec<IpAddr>, Failure> {
        match self {
            Addresses::Some(ips) => Ok(ips),
            Addresses::None => Err(empty(name)),
            Addresses::NxDomain => Err(nxdomain(name)),
            Addresses::Failed(f) => Err(failed(name, f)),
        }
    }
}

/// `name` exists but has no record of the types asked.
fn empty(name: &str) -> Failure {
    Failure {
        outcome: Outcome::Empty,
        message: format!("{name} has no records"),
    }
}

/// `name` does not exist.
fn nxdomain(name: &str) -> Failure {
    Failure {
        outcome: Outcome::NxDomain,
        message: format!("{name} does not exist (NXDOMAIN)"),
    }
}

/// A query about `name` failed.
fn failed(name: &str, f: Failure) -> Failure {
    Failure {
        outcome: f.outcome,
        message: format!("{name}: {}", f.message),
    }
}

/// Combines the A and AAAA answers. Both must be usable: keeping the last known set is better
/// than dropping every IPv6 worker because the AAAA query timed out.
fn combine(a: Said, aaaa: Said) -> Addresses {
    let mut ips = Vec::new();
    let mut nxdomain = 0;
    for said in [a, aaaa] {
        match said {
            Said::Failed(f) => return Addresses::Failed(f),
            Said::NxDomain => nxdomain += 1,
            Said::NoData => {}
            Said::Records(lookup) => {
                ips.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                }))
            }
        }
    }
    match (ips.is_empty(), nxdomain) {
        (false, _) => Addresses::Some(ips),
        (true, 2) => Addresses::NxDomain,
        (true, _) => Addresses::None,
    }
}

/// A name's A and AAAA records, asked at once.
async fn addresses(resolver: &TokioResolver, name: &str) -> Addresses {
    let (a, aaaa) = tokio::join!(
        resolver.lookup(name, RecordType::A),
        resolver.lookup(name, RecordType::AAAA)
    );
    combine(said(a), said(aaaa))
}

/// A name as a key: lower case, no trailing dot.
fn key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The SRV records of `name`; each target's addresses from the answer's additional section, or
/// asked for when it has none. A target that does not exist (or is `.`, "no service") is
/// skipped; a target whose lookup fails fails the whole resolution, so that the last known set
/// stays.
async fn srv(resolver: &TokioResolver, name: &str) -> Result<Vec<Found>, Failure> {
    let lookup = match said(resolver.lookup(name, RecordType::SRV).await) {
        Said::Records(lookup) => lookup,
        Said::NoData => return Err(empty(name)),
        Said::NxDomain => return Err(nxdomain(name)),
        Said::Failed(f) => return Err(failed(name, f)),
    };
    let mut glue: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for r in lookup.additionals() {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        glue.entry(key(&r.name.to_ascii())).or_default().push(ip);
    }
    let records: Vec<(String, u16, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) if !srv.target.is_root() => {
                Some((srv.target.to_ascii(), srv.port, srv.weight))
            }
            _ => None,
        })
        .collect();
    // Targets without glue are asked for, all at once.
    let mut asked: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let mut pending = tokio::task::JoinSet::new();
    for (target, _, _) in &records {
        let k = key(target);
        if glue.contains_key(&k) || asked.contains_key(&k) {
            continue;
        }
        asked.insert(k.clone(), Vec::new());
        let (resolver, target) = (resolver.clone(), target.clone());
        pending.spawn(async move { (k, addresses(&resolver, &target).await, target) });
    }
    while let Some(joined) = pending.join_next().await {
        let (k, addrs, target) = joined.map_err(|e| Failure {
            outcome: Outcome::Error,
            message: format!("a target lookup stopped: {e}"),
        })?;
        match addrs {
            Addresses::Some(ips) => {
                asked.insert(k, ips);
            }
            Addresses::None | Addresses::NxDomain => {
                tracing::debug!(srv = name, target, "SRV target has no address; skipped");
            }
            Addresses::Failed(f) => return Err(failed(&target, f)),
        }
    }
    let mut found = Vec::new();
    for (target, port, weight) in records {
        let k = key(&target);
        for ip in glue.get(&k).or(asked.get(&k)).into_iter().flatten() {
            found.push(Found {
                addr: SocketAddr::new(*ip, port),
                srv_weight: Some(weight),
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::{A, CNAME};
    use hickory_resolver::proto::rr::{Name, Record};

    use super::*;

    fn records(data: Vec<RData>) -> Said {
        let name = Name::from_ascii("w.test.").unwrap();
        let answers = data
            .into_iter()
            .map(|d| Record::from_rdata(name.clone(), 60, d));
        Said::Records(Lookup::new_with_max_ttl(
            Query::query(name.clone(), RecordType::A),
            answers,
        ))
    }

    fn a(last: u8) -> RData {
        RData::A(A(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn timeout() -> Said {
        Said::Failed(Failure {
            outcome: Outcome::Timeout,
            message: "timeout".into(),
        })
    }

    #[test]
    fn a_and_aaaa_answers_combine_and_any_failure_fails_the_whole() {
        let cname = RData::CNAME(CNAME(Name::from_ascii("x.test.").unwrap()));
        assert_eq!(
            combine(records(vec![cname, a(1), a(2)]), Said::NoData),
            Addresses::Some(vec![
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
            ])
        );
        assert!(matches!(
            combine(records(vec![a(1)]), timeout()),
            Addresses::Failed(Failure {
                outcome: Outcome::Timeout,
                ..
            })
        ));
        assert_eq!(combine(Said::NxDomain, Said::NxDomain), Addresses::NxDomain);
        assert_eq!(combine(Said::NoData, Said::NxDomain), Addresses::None);
        assert_eq!(combine(Said::NoData, records(vec![])), Addresses::None);
    }

    #[test]
    fn resolver_errors_are_classified() {
        let nx = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            Query::default(),
            ResponseCode::NXDomain,
        )));
        assert!(matches!(said(Err(nx)), Said::NxDomain));
        let nodata = NetError::Dns(DnsError::NoRecordsFound(NoRecords::new(
            Query::default(),
            ResponseCode::NoError,
        )));
        assert!(matches!(said(Err(nodata)), Said::NoData));
        let servfail = NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail));
        assert!(matches!(
            said(Err(servfail)),
            Said::Failed(Failure {
                outcome: Outcome::ServFail,
                ..
            })
        ));
        let refused = NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused));
        assert!(matches!(
            said(Err(refused)),
            Said::Failed(Failure {
                outcome: Outcome::Error,
                ..
            })
        ));
        assert!(matches!(
            said(Err(NetError::Timeout)),
            Said::Failed(Failure {
                outcome: Outcome::Timeout,
                ..
            })
        ));
    }
}
