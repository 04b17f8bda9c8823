//! Which protocol a client speaks, from its first bytes, and the answer to an HTTP/2 client
//! whose connection preface is wrong.
//!
//! hyper's automatic detection compares the first 24 bytes with the HTTP/2 preface and takes
//! anything else for HTTP/1.1, so a client that starts the preface and gets it wrong is answered
//! in HTTP/1.1 (or not at all), where RFC 9113 §3.4 asks for a connection error of type
//! `PROTOCOL_ERROR`. syncgate reads the first bytes itself: the full preface is HTTP/2; a start
//! with the `PRI` method (reserved for the preface, RFC 9113 §11.6), or anything at all after
//! TLS negotiated ALPN `h2`, that is not the preface is a bad preface: the client gets an empty
//! `SETTINGS` (the server preface) and `GOAWAY(PROTOCOL_ERROR)`, and the connection closes.
//! Everything else is HTTP/1.1. The bytes read are handed on to hyper ([`super::io::Watched`]).

use tokio::io::{AsyncRead, AsyncReadExt};

use super::io::PREFIX_LEN;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; PREFIX_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The server's answer to a bad preface: an empty `SETTINGS` frame (the server connection
/// preface, which must come first), then `GOAWAY` with last stream 0 and `PROTOCOL_ERROR` (1).
pub const BAD_PREFACE_ANSWER: [u8; 26] = [
    0, 0, 0, 0x04, 0, 0, 0, 0, 0, // SETTINGS, length 0, stream 0
    0, 0, 8, 0x07, 0, 0, 0, 0, 0, // GOAWAY, length 8, stream 0
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// HTTP/1.1 (or something hyper will answer `400`).
    Http1,
    /// The HTTP/2 preface, complete.
    Http2,
    /// An HTTP/2 client whose preface is wrong.
    BadPreface,
    /// The client closed before saying anything decisive.
    Closed,
}

/// Decides from the first bytes; `h2_negotiated`: TLS ALPN chose `h2`, so nothing but the
/// preface is acceptable. Pure.
pub fn classify(first: &[u8], h2_negotiated: bool) -> Opening {
    if first == PREFACE {
        Opening::Http2
    } else if h2_negotiated || first.starts_with(b"PRI ") {
        Opening::BadPreface
    } else {
        Opening::Http1
    }
}

/// Reads until the first bytes decide the protocol: the whole preface, or the first byte that
/// departs from it (one read for nearly every HTTP/1.1 request). Returns the bytes read (at
/// most [`PREFIX_LEN`]) in `buf` and how many there are.
pub async fn sniff<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut [u8; PREFIX_LEN],
    h2_negotiated: bool,
) -> std::io::Result<(Opening, usize)> {
    let mut n = 0;
    loop {
        let read = io.read(&mut buf[n..]).await?;
        if read == 0 {
            return Ok((Opening::Closed, n));
        }
        n += read;
        let still_preface = PREFACE.starts_with(&buf[..n]);
        if n == PREFIX_LEN || !still_preface {
            return Ok((classify(&buf[..n], h2_negotiated), n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_http2_a_wrong_one_is_a_bad_preface() {
        assert_eq!(classify(PREFACE, false), Opening::Http2);
        assert_eq!(classify(PREFACE, true), Opening::Http2);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\rQ", false),
            Opening::BadPreface
        );
        assert_eq!(classify(b"PRI / HTTP/1.1\r\n", false), Opening::BadPreface);
        assert_eq!(
            classify(b"POST /v1/batch HTTP/1.1\r", false),
            Opening::Http1
        );
        assert_eq!(
            classify(b"INVALID CONNECTION PREFACE\r\n", false),
            Opening::Http1,
            "cleartext: hyper answers it as a bad HTTP/1.1 request"
        );
        assert_eq!(
            classify(b"INVALID CONNECTION PREFACE\r\n", true),
            Opening::BadPreface,
            "after ALPN h2 only the preface will do"
        );
    }

    #[tokio::test]
    async fn sniffing_reads_only_until_the_bytes_decide() {
        let mut buf = [0u8; PREFIX_LEN];
        let mut http1: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (opening, n) = sniff(&mut http1, &mut buf, false).await.unwrap();
        assert_eq!((opening, n), (Opening::Http1, PREFIX_LEN));
        let mut h2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04";
        assert_eq!(
            sniff(&mut h2, &mut buf, false).await.unwrap(),
            (Opening::Http2, PREFIX_LEN)
        );
        assert_eq!(h2, b"\0\0\0\x04", "nothing beyond the preface is read");
        let mut short: &[u8] = b"PR";
        assert_eq!(
            sniff(&mut short, &mut buf, false).await.unwrap(),
            (Opening::Closed, 2)
        );
        let mut prix: &[u8] = b"PRX";
        assert_eq!(
            sniff(&mut prix, &mut buf, false).await.unwrap(),
            (Opening::Http1, 3)
        );
    }
}
