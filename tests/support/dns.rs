//! A small authoritative DNS server for tests: UDP and TCP on one `127.0.0.1` port, answers
//! that the test changes at runtime (A/AAAA, SRV with or without glue, SERVFAIL, NXDOMAIN, no
//! answer at all), and truncation over UDP, so that a large answer is fetched again over TCP
//! as real resolvers do. Messages are encoded and decoded with hickory-proto.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

/// TTL of every record: long, to show that the resolver does not cache (it asks every
/// `interval` anyway).
const TTL: u32 = 3600;

/// One SRV record.
#[derive(Debug, Clone)]
pub struct SrvRecord {
    /// Record weight.
    pub weight: u16,
    /// Port of the service on the target.
    pub port: u16,
    /// Target host name.
    pub target: String,
}

/// What the server answers for a name.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A records for the IPv4 addresses, AAAA for the IPv6 ones; an empty list is "no records"
    /// (NOERROR, no answer).
    Addrs(Vec<IpAddr>),
    /// SRV records; with `glue`, the targets' addresses known to this server go into the
    /// additional section.
    Srv {
        /// The records.
        records: Vec<SrvRecord>,
        /// Whether to add the targets' A/AAAA records.
        glue: bool,
    },
    /// `SERVFAIL`.
    ServFail,
    /// `NXDOMAIN` (also the answer for a name never set).
    NxDomain,
    /// No answer at all: the client times out.
    Drop,
}

/// What the server answers: names lower-case, without the trailing dot.
type Zone = Arc<Mutex<HashMap<String, Answer>>>;

/// The running server; stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    zone: Zone,
    udp_queries: Arc<AtomicU64>,
    tcp_queries: Arc<AtomicU64>,
    token: CancellationToken,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl TestDns {
    /// Starts on `127.0.0.1`, UDP and TCP on the same free port.
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp address");
        let zone: Zone = Arc::default();
        let udp_queries = Arc::new(AtomicU64::new(0));
        let tcp_queries = Arc::new(AtomicU64::new(0));
        let token = CancellationToken::new();
        tokio::spawn(serve_udp(
            udp,
            zone.clone(),
            udp_queries.clone(),
            token.clone(),
        ));
        tokio::spawn(serve_tcp(
            tcp,
            zone.clone(),
            tcp_queries.clone(),
            token.clone(),
        ));
        TestDns {
            addr,
            zone,
            udp_queries,
            tcp_queries,
            token,
        }
    }

    /// The server's address, for `resolver = "..."`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `answer` for `name` from now on.
    pub fn set(&self, name: &str, answer: Answer) {
        self.zone.lock().unwrap().insert(normal(name), answer);
    }

    /// Queries received over UDP so far.
    pub fn udp_queries(&self) -> u64 {
        self.udp_queries.load(Ordering::Relaxed)
    }

    /// Queries received over TCP so far.
    pub fn tcp_queries(&self) -> u64 {
        self.tcp_queries.load(Ordering::Relaxed)
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.udp_queries() + self.tcp_queries()
    }
}

/// A UDP socket and a TCP listener on the same free `127.0.0.1` port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("udp address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn normal(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The answer to `query`, or `None` to stay silent.
fn respond(zone: &Zone, query: &Message) -> Option<Message> {
    let q = query.queries.first()?;
    let name = normal(&q.name().to_ascii());
    let answer = zone
        .lock()
        .unwrap()
        .get(&name)
        .cloned()
        .unwrap_or(Answer::NxDomain);
    let mut msg = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    msg.metadata.authoritative = true;
    msg.metadata.recursion_desired = query.metadata.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.add_query(q.clone());
    let owner = q.name().clone();
    match (answer, q.query_type()) {
        (Answer::Drop, _) => return None,
        (Answer::ServFail, _) => msg.metadata.response_code = ResponseCode::ServFail,
        (Answer::NxDomain, _) => msg.metadata.response_code = ResponseCode::NXDomain,
        (Answer::Addrs(ips), t @ (RecordType::A | RecordType::AAAA)) => {
            msg.add_answers(addr_records(&owner, &ips, t));
        }
        (Answer::Srv { records, glue }, RecordType::SRV) => {
            for r in &records {
                let target = Name::from_ascii(format!("{}.", normal(&r.target))).ok()?;
                msg.add_answer(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::SRV(SRV::new(0, r.weight, r.port, target.clone())),
                ));
                if glue {
                    let known = zone.lock().unwrap().get(&normal(&r.target)).cloned();
                    if let Some(Answer::Addrs(ips)) = known {
                        msg.add_additionals(addr_records(&target, &ips, RecordType::A));
                        msg.add_additionals(addr_records(&target, &ips, RecordType::AAAA));
                    }
                }
            }
        }
        // The name exists, with no record of this type.
        _ => {}
    }
    Some(msg)
}

/// A or AAAA records of `ips` (those of the family `t`) for `owner`.
fn addr_records(owner: &Name, ips: &[IpAddr], t: RecordType) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (ip, t) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(owner.clone(), TTL, data))
        .collect()
}

async fn serve_udp(socket: UdpSocket, zone: Zone, count: Arc<AtomicU64>, token: CancellationToken) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = tokio::select! {
            _ = token.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        count.fetch_add(1, Ordering::Relaxed);
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(response) = respond(&zone, &query) else {
            continue;
        };
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        // What the client said it can take over UDP (EDNS), at least 512 bytes.
        if bytes.len() > usize::from(query.max_payload()) {
            match response.truncate().to_vec() {
                Ok(truncated) => bytes = truncated,
                Err(_) => continue,
            }
        }
        let _ = socket.send_to(&bytes, peer).await;
    }
}

async fn serve_tcp(
    listener: TcpListener,
    zone: Zone,
    count: Arc<AtomicU64>,
    token: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        let (zone, count, token) = (zone.clone(), count.clone(), token.clone());
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                let read = tokio::select! {
                    _ = token.cancelled() => return,
                    r = stream.read_exact(&mut len) => r,
                };
                if read.is_err() {
                    return;
                }
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::Relaxed);
                let Ok(query) = Message::from_vec(&buf) else {
                    return;
                };
                let Some(response) = respond(&zone, &query) else {
                    continue;
                };
                let Ok(bytes) = response.to_vec() else {
                    return;
                };
                let Ok(len) = u16::try_from(bytes.len()) else {
                    return;
                };
                if stream.write_all(&len.to_be_bytes()).await.is_err()
                    || stream.write_all(&bytes).await.is_err()
                {
                    return;
                }
            }
        });
    }
}
