//! A [`Line`] as the proxy threads hand it to the writer: a compact binary record, pure.
//!
//! Why not text: formatting takes a thousand-odd instructions of its own code per line, and
//! run once per request between the proxy's own code it evicts that code from the
//! instruction cache; the request then pays several times the formatting's own cost. A
//! record is a few fixed-size stores and three short copies. The writer thread decodes and
//! formats whole batches at once, its formatting code warm for every line of a batch.
//!
//! Layout, little-endian: `u16` record length; `u64` time (µs since the Unix epoch),
//! duration (µs), upstream duration (µs, `u64::MAX` when absent), body bytes in, body bytes
//! out; `u32` retries; `u16` status; `u8` version, guard (0: none, else 1 + its index in
//! [`GuardOutcome::ALL`]), flags (1: aborted, 2: has a request id, 4: has a backend), address
//! family (4 or 6); 16 bytes of address; `u16` port; then the method, the path, the request
//! id, the pool and the backend, each as a `u16` length and its bytes (cut at `u16::MAX`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::Version;

use super::format::Line;
use crate::metrics::GuardOutcome;

const ABORTED: u8 = 1;
const HAS_ID: u8 = 2;
const HAS_BACKEND: u8 = 4;
const NO_UPSTREAM: u64 = u64::MAX;

/// Bytes of a record before its texts.
const FIXED: usize = 2 + 5 * 8 + 4 + 2 + 4 + 16 + 2;

/// Appends `line` as one record.
pub(super) fn encode(out: &mut Vec<u8>, line: &Line<'_>) {
    let upstream = line
        .upstream
        .map_or(NO_UPSTREAM, |d| micros(d).min(NO_UPSTREAM - 1));
    let guard = line.guard.map_or(0, |g| {
        GuardOutcome::ALL
            .iter()
            .position(|x| *x == g)
            .map_or(0, |i| i as u8 + 1)
    });
    let flags = (u8::from(line.aborted) * ABORTED)
        | (u8::from(line.request_id.is_some()) * HAS_ID)
        | (u8::from(line.backend.is_some()) * HAS_BACKEND);
    let (family, ip) = match line.client.ip() {
        IpAddr::V4(v4) => (4, v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => (6, v6.octets()),
    };
    let (pool, backend) = line.backend.unwrap_or_default();
    let texts = [
        line.method,
        line.path,
        line.request_id.unwrap_or_default(),
        pool,
        backend,
    ]
    .map(|t| &t[..t.len().min(usize::from(u16::MAX))]);
    let len = FIXED + texts.iter().map(|t| 2 + t.len()).sum::<usize>();
    // The fixed part is put together on the stack and appended at once.
    let mut fixed = [0u8; FIXED];
    let mut at = 0;
    for part in [
        // A record longer than `u16::MAX` cannot happen (a request head is at most 64 KiB);
        // its length would then read 0, and the writer stop at it rather than misread.
        &u16::try_from(len).unwrap_or(0).to_le_bytes()[..],
        &micros(line.time).to_le_bytes(),
        &micros(line.duration).to_le_bytes(),
        &upstream.to_le_bytes(),
        &line.bytes_in.to_le_bytes(),
        &line.bytes_out.to_le_bytes(),
        &line.retries.to_le_bytes(),
        &line.status.to_le_bytes(),
        &[version_code(line.version), guard, flags, family],
        &ip,
        &line.client.port().to_le_bytes(),
    ] {
        fixed[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    out.reserve(len);
    out.extend_from_slice(&fixed);
    for t in texts {
        out.extend_from_slice(&(t.len() as u16).to_le_bytes());
        out.extend_from_slice(t);
    }
}

/// The first record of `bytes`, and the bytes after it; None at the end, or at a record
/// that does not decode (the rest of the batch is then let go).
pub(super) fn decode(bytes: &[u8]) -> Option<(Line<'_>, &[u8])> {
    let len = usize::from(u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?));
    let (record, rest) = (bytes.get(..len)?, bytes.get(len..)?);
    let mut r = Reader(record.get(2..)?);
    let time = Duration::from_micros(r.u64()?);
    let duration = Duration::from_micros(r.u64()?);
    let upstream = Some(r.u64()?)
        .filter(|u| *u != NO_UPSTREAM)
        .map(Duration::from_micros);
    let bytes_in = r.u64()?;
    let bytes_out = r.u64()?;
    let retries = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let [version, guard, flags, family] = r.take(4)?.try_into().ok()?;
    let ip: [u8; 16] = r.take(16)?.try_into().ok()?;
    let port = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
    let ip = match family {
        4 => IpAddr::V4(
            Ipv6Addr::from(ip)
                .to_ipv4_mapped()
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
        ),
        _ => IpAddr::V6(Ipv6Addr::from(ip)),
    };
    let method = r.text()?;
    let path = r.text()?;
    let request_id = r.text()?;
    let pool = r.text()?;
    let backend = r.text()?;
    let line = Line {
        time,
        client: SocketAddr::new(ip, port),
        method,
        path,
        version: version_of(version),
        status,
        bytes_in,
        bytes_out,
        duration,
        upstream,
        backend: (flags & HAS_BACKEND != 0).then_some((pool, backend)),
        guard: usize::from(guard)
            .checked_sub(1)
            .and_then(|i| GuardOutcome::ALL.get(i).copied()),
        retries,
        request_id: (flags & HAS_ID != 0).then_some(request_id),
        aborted: flags & ABORTED != 0,
    };
    Some((line, rest))
}

/// Microseconds, saturated.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn version_code(v: Version) -> u8 {
    match v {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_11 => 2,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 255,
    }
}

fn version_of(code: u8) -> Version {
    match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

/// Reads a record's fields in order; None past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn text(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        self.take(usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Line<'static> {
        Line {
            time: Duration::from_micros(1_767_323_045_678_901),
            client: "10.0.0.7:51234".parse().expect("addr"),
            method: b"POST",
            path: b"/v1/batch",
            version: Version::HTTP_2,
            status: 503,
            bytes_in: 1532,
            bytes_out: 17,
            duration: Duration::from_micros(2841),
            upstream: Some(Duration::from_micros(2511)),
            backend: Some((b"push", b"worker-1")),
            guard: Some(GuardOutcome::AcceptedAtGeneration),
            retries: 3,
            request_id: Some(b"4bf92f35"),
            aborted: true,
        }
    }

    fn same(a: &Line<'_>, b: &Line<'_>) {
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    #[test]
    fn every_field_comes_back_as_it_went_in() {
        let mut lines = vec![sample()];
        lines.push(Line {
            client: "[2001:db8::1]:443".parse().expect("addr"),
            upstream: None,
            backend: None,
            guard: None,
            request_id: None,
            aborted: false,
            path: b"",
            version: Version::HTTP_10,
            ..sample()
        });
        lines.push(Line {
            guard: Some(GuardOutcome::Replayed),
            request_id: Some(b""),
            ..sample()
        });
        let mut bytes = Vec::new();
        for l in &lines {
            encode(&mut bytes, l);
        }
        let mut rest = &bytes[..];
        for l in &lines {
            let (back, after) = decode(rest).expect("a record");
            same(&back, l);
            rest = after;
        }
        assert!(rest.is_empty() && decode(rest).is_none());
    }

    #[test]
    fn a_truncated_batch_stops_at_the_broken_record() {
        let mut bytes = Vec::new();
        encode(&mut bytes, &sample());
        let one = bytes.len();
        encode(&mut bytes, &sample());
        assert!(decode(&bytes[one..bytes.len() - 1]).is_none());
        assert!(decode(&bytes[..1]).is_none());
        let (_, rest) = decode(&bytes).expect("the first");
        assert_eq!(rest.len(), one);
    }
}
