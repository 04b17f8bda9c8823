//! HTTP/1.1 as the proxy speaks it to a worker, without I/O: the request head it writes
//! ([`HeadWriter`]), the answer head it reads ([`parse_head`]), and the answer body's framing
//! ([`Framing`], [`Chunked`]). Pure functions over byte buffers, unit-tested on their own; the
//! socket side is `conn.rs`. The buffers of request heads and the maps of answer heads come
//! from small per-thread pools ([`RequestHead`], [`recycle_headers`]): each request would
//! otherwise allocate and free them, in bursts that take `malloc`'s slow path.
//!
//! What it follows (RFC 9112): an answer to `HEAD`, a `1xx`,
//! `204` and `304` have no body; `Transfer-Encoding` ending in `chunked` wins over
//! `Content-Length`, any other transfer coding reads to the end of the connection; several
//! `Content-Length` values must agree; without either the body runs to the end of the
//! connection. A connection is kept for the next request only when the answer is HTTP/1.1
//! without `Connection: close` (or HTTP/1.0 with `Connection: keep-alive`), its body was
//! framed, and it did not carry both a transfer coding and a length. Answer trailers are read
//! and dropped.

use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;
use std::thread::LocalKey;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Largest answer head accepted (as for client requests).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in an answer head (hyper's default was 100).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) and largest trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The head is not valid HTTP/1.x.
    #[error("invalid answer head: {0}")]
    Head(&'static str),
    /// The head is larger than [`MAX_HEAD`] or has more than 100 fields.
    #[error("answer head too large")]
    TooLarge,
    /// The body's framing headers contradict each other or are invalid.
    #[error("invalid answer framing: {0}")]
    Framing(&'static str),
    /// A chunk of a chunked body is malformed.
    #[error("invalid chunked body: {0}")]
    Chunk(&'static str),
}

/// How the request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body (`Content-Length: 0` when the client sent a length).
    Empty {
        /// The client sent a `Content-Length`.
        said_length: bool,
    },
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Request heads a proxy thread keeps for its next requests: a head is written, sent and
/// dropped per request, and a thread with many requests in flight allocates and frees them in
/// bursts larger than glibc's per-thread cache keeps (7 blocks of a size), so most of them took
/// `malloc`'s slow path.
const POOLED_HEADS: usize = 64;
/// A head buffer that grew larger than this (long cookies, say) is freed, not kept.
const POOLED_HEAD_MAX: usize = 8 * 1024;

/// What a thread keeps of one kind of buffer for its next requests: at most `N`, taken and
/// given back by that thread only. A thread that is ending has no spares any more: what it
/// would give back is freed.
struct Spares<T, const N: usize>(RefCell<Vec<T>>);

impl<T, const N: usize> Spares<T, N> {
    const fn new() -> Self {
        Spares(RefCell::new(Vec::new()))
    }

    /// One of the calling thread's spares, if it has one.
    fn take(spares: &'static LocalKey<Self>) -> Option<T> {
        spares
            .try_with(|s| s.0.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
    }

    /// Keeps `spare` for the calling thread, unless it has `N` already.
    fn give(spares: &'static LocalKey<Self>, spare: T) {
        let _ = spares.try_with(|s| {
            if let Ok(mut s) = s.0.try_borrow_mut() {
                if s.len() < N {
                    s.push(spare);
                }
            }
        });
    }
}

thread_local! {
    static HEADS: Spares<Vec<u8>, POOLED_HEADS> = const { Spares::new() };
}

/// An encoded request head, in a buffer that goes back to its thread's pool when dropped.
#[derive(Debug, Default)]
pub struct RequestHead(Vec<u8>);

impl RequestHead {
    /// An empty head in a buffer from the pool (or a new one).
    fn empty() -> RequestHead {
        RequestHead(Spares::take(&HEADS).unwrap_or_else(|| Vec::with_capacity(512)))
    }

    /// A copy, to send again elsewhere.
    pub fn copy(&self) -> RequestHead {
        let mut copy = RequestHead::empty();
        copy.0.extend_from_slice(&self.0);
        copy
    }
}

impl std::ops::Deref for RequestHead {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for RequestHead {
    fn drop(&mut self) {
        let cap = self.0.capacity();
        if cap == 0 || cap > POOLED_HEAD_MAX {
            return;
        }
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        Spares::give(&HEADS, buf);
    }
}

/// Header maps a proxy thread keeps for its next answers. A client's request arrives with a
/// header map (hyper's HTTP/1.1 connection even builds it in the map of the answer before),
/// which is dropped once the upstream head is written; each answer from a worker needs a new
/// one, which hyper drops once the answer's head is written (two allocations each way, in
/// the same bursts as the heads above). The request's map, emptied, holds an answer instead.
const POOLED_MAPS: usize = 64;
/// A map with room for more fields than this, or that held more values (the values of a
/// repeated field live in a second vector that emptying keeps too), is freed, not kept.
const POOLED_MAP_MAX: usize = 64;

thread_local! {
    static MAPS: Spares<HeaderMap, POOLED_MAPS> = const { Spares::new() };
}

/// Keeps `map`, emptied, for a later answer of this thread's (see [`POOLED_MAPS`]).
pub fn recycle_headers(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > POOLED_MAP_MAX || map.len() > POOLED_MAP_MAX {
        return;
    }
    map.clear();
    Spares::give(&MAPS, map);
}

/// An empty map with room for at least `fields`, from the pool when it has one.
fn pooled_headers(fields: usize) -> HeaderMap {
    match Spares::take(&MAPS) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// A request head being written: the request line, then header fields; [`HeadWriter::finish`]
/// adds the framing header and ends it. The caller leaves out the framing headers it got.
/// The default is an empty writer, what is left where a head was taken from.
#[derive(Debug, Default)]
pub struct HeadWriter {
    head: RequestHead,
}

impl HeadWriter {
    /// A head with its request line; `target` in origin form.
    pub fn new(method: &Method, target: &str) -> HeadWriter {
        let mut head = RequestHead::empty();
        let buf = &mut head.0;
        buf.extend_from_slice(method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(target.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter { head }
    }

    /// Appends a header field.
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let buf = &mut self.head.0;
        buf.extend_from_slice(name);
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value);
        buf.extend_from_slice(b"\r\n");
    }

    /// Appends to the value of the field written last (its CRLF moves behind).
    pub fn extend_value(&mut self, more: &[u8]) {
        let buf = &mut self.head.0;
        buf.truncate(buf.len().saturating_sub(2));
        buf.extend_from_slice(more);
        buf.extend_from_slice(b"\r\n");
    }

    /// The whole head, with the framing header.
    pub fn finish(mut self, framing: ReqFraming) -> RequestHead {
        let buf = &mut self.head.0;
        match framing {
            ReqFraming::Empty { said_length: false } => {}
            ReqFraming::Empty { said_length: true } => {
                buf.extend_from_slice(b"content-length: 0\r\n")
            }
            ReqFraming::Length(n) => {
                buf.extend_from_slice(b"content-length: ");
                push_decimal(buf, n);
                buf.extend_from_slice(b"\r\n");
            }
            ReqFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        buf.extend_from_slice(b"\r\n");
        self.head
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The size line of a chunk of `len` bytes: hex digits and CRLF.
pub fn chunk_line(len: usize) -> Bytes {
    let mut line = Vec::with_capacity(18);
    line.extend_from_slice(format!("{len:x}").as_bytes());
    line.extend_from_slice(b"\r\n");
    Bytes::from(line)
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the worker closes the connection.
    Close,
}

/// An answer head.
#[derive(Debug)]
pub struct Head {
    /// The status.
    pub status: StatusCode,
    /// The answer's headers, hop-by-hop ones removed (RFC 9110 §7.6.1).
    pub headers: HeaderMap,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// What [`parse_head`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An interim (`1xx`) answer, consumed from the buffer: the real one follows.
    Interim,
    /// A final answer head, consumed from the buffer.
    Final(Head),
}

/// Parses the answer head at the start of `buf` (the answer to a `HEAD` request with
/// `head_request`), and consumes it when complete. Header values share the buffer's memory.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Parsed, ParseError> {
    // Uninitialised: zeroing 100 fields per answer would cost more than parsing them.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(ParseError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge),
        Err(e) => return Err(ParseError::Head(parse_error(e))),
    };
    if len > MAX_HEAD {
        return Err(ParseError::TooLarge);
    }
    let code = resp.code.ok_or(ParseError::Head("status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| ParseError::Head("status"))?;
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // syncgate never asks for an upgrade (it strips `Upgrade`).
            return Err(ParseError::Head("unrequested 101 Switching Protocols"));
        }
        let _ = buf.split_to(len);
        return Ok(Parsed::Interim);
    }
    // Offsets of the fields within the head, so that names and values can be read from it
    // once it is split off the buffer (the values then share its memory). Kept in the
    // thread's vector, taken and put back: not an allocation per answer.
    let base = buf.as_ptr() as usize;
    let mut spans = SPANS.take();
    spans.clear();
    spans.extend(resp.headers.iter().map(|field| {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        (
            name,
            name + field.name.len(),
            value,
            value + field.value.len(),
        )
    }));
    let head = buf.split_to(len).freeze();
    let built = build_head(&head, &spans, status, version, head_request);
    SPANS.set(spans);
    built
}

thread_local! {
    /// [`parse_head`]'s field offsets, kept between answers. `parse_head` takes the vector
    /// and puts it back; were it ever re-entered, the inner call would find an empty one.
    static SPANS: Cell<Vec<(usize, usize, usize, usize)>> = const { Cell::new(Vec::new()) };
}

/// The answer's head from the fields at `spans` of `head`.
fn build_head(
    head: &Bytes,
    spans: &[(usize, usize, usize, usize)],
    status: StatusCode,
    version: Version,
    head_request: bool,
) -> Result<Parsed, ParseError> {
    let mut headers = pooled_headers(spans.len());
    let mut conn = Connection::default();
    let mut lengths: Option<u64> = None;
    // The field's own value when it is the length in decimal, as written below: no new one.
    let mut length_value = None;
    let mut chunked = None;
    for &(name_from, name_to, from, to) in spans {
        let name = HeaderName::from_bytes(&head[name_from..name_to])
            .map_err(|_| ParseError::Head("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(from..to))
            .map_err(|_| ParseError::Head("header value"))?;
        match classify(&name) {
            Field::Connection => {
                conn.note(&value);
                continue;
            }
            Field::TransferEncoding => {
                // The last coding decides: chunked, or the body runs to the end.
                chunked = Some(last_coding_is_chunked(&value));
                continue;
            }
            Field::ContentLength => {
                let n = parse_length(&value)?;
                if lengths.is_some_and(|l| l != n) {
                    return Err(ParseError::Framing("conflicting content-length"));
                }
                // Written once, as the parsed number, below: `5, 5` or a repeated field
                // must not reach the client as is.
                lengths = Some(n);
                if length_value.is_none() && is_decimal(value.as_bytes()) {
                    length_value = Some(value);
                }
                continue;
            }
            Field::HopByHop => continue,
            Field::Other => {}
        }
        headers.append(name, value);
    }
    if conn.named_other {
        conn.remove_named(&mut headers);
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else {
        match (chunked, lengths) {
            (Some(true), _) if version == Version::HTTP_11 => Framing::Chunked,
            // A transfer coding hyper could not read either: to the end of the connection.
            (Some(_), _) => Framing::Close,
            (None, Some(0)) => Framing::Empty,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    // With a transfer coding the length is not the body's (RFC 9112 §6.3): it must not reach
    // the client.
    if let (None, Some(n)) = (chunked, lengths) {
        let value = length_value.unwrap_or_else(|| HeaderValue::from(n));
        headers.insert(header::CONTENT_LENGTH, value);
    }
    // Both a transfer coding and a length: sender and receiver may disagree on where the
    // answer ends (RFC 9112 §6.3 says to treat it as an error): read as chunked, never reused.
    let ambiguous = chunked.is_some() && lengths.is_some();
    let keep_alive = framing != Framing::Close
        && !ambiguous
        && match version {
            Version::HTTP_11 => !conn.close,
            _ => conn.keep_alive && !conn.close,
        };
    Ok(Parsed::Final(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "header name",
        httparse::Error::HeaderValue => "header value",
        httparse::Error::NewLine => "line ending",
        httparse::Error::Status => "status",
        httparse::Error::Token => "token",
        httparse::Error::Version => "version",
        _ => "syntax",
    }
}

enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    HopByHop,
    Other,
}

fn classify(name: &HeaderName) -> Field {
    if name == header::CONNECTION {
        Field::Connection
    } else if name == header::TRANSFER_ENCODING {
        Field::TransferEncoding
    } else if name == header::CONTENT_LENGTH {
        Field::ContentLength
    } else if name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
    {
        Field::HopByHop
    } else {
        Field::Other
    }
}

/// What an answer's `Connection` headers say.
#[derive(Default)]
struct Connection {
    close: bool,
    keep_alive: bool,
    /// They name other headers, which are hop-by-hop then.
    named_other: bool,
    values: Vec<HeaderValue>,
}

impl Connection {
    fn note(&mut self, value: &HeaderValue) {
        let mut names_other = false;
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                names_other = true;
            }
        }
        if names_other {
            // Rare: kept to remove the headers it names once all are read.
            self.named_other = true;
            self.values.push(value.clone());
        }
    }

    fn remove_named(&self, headers: &mut HeaderMap) {
        for value in &self.values {
            for token in value.as_bytes().split(|&b| b == b',') {
                if let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) {
                    headers.remove(name);
                }
            }
        }
    }
}

fn last_coding_is_chunked(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether `digits` are a number as it is written in decimal: digits only, no leading zero.
fn is_decimal(digits: &[u8]) -> bool {
    matches!(digits, [b'0'] | [b'1'..=b'9', ..]) && digits.iter().all(u8::is_ascii_digit)
}

fn parse_length(value: &HeaderValue) -> Result<u64, ParseError> {
    let invalid = ParseError::Framing("invalid content-length");
    // A list of equal values (`5, 5`) is one length (RFC 9110 §8.6).
    let mut found = None;
    for part in value.as_bytes().split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(invalid);
        }
        let n = std::str::from_utf8(part)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(invalid.clone())?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseError::Framing("conflicting content-length"));
        }
        found = Some(n);
    }
    found.ok_or(invalid)
}

/// The decoder of a chunked body, fed from the connection's read buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// What [`Chunked::decode`] got from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no complete piece: read more.
    NeedMore,
    /// The body is complete (its trailers consumed).
    Done,
}

impl Chunked {
    /// Consumes what it can from `buf`: the next data, or the framing up to it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::Done),
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let rest = left - n as u64;
                    self.state = if rest == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Chunk("missing CRLF after chunk data"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf, MAX_TRAILERS)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// Takes one CRLF-terminated line off `buf` (without its CRLF), or none while it is not
/// complete; a line longer than `max` is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ParseError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            if end == 0 || buf[end - 1] != b'\r' {
                return Err(ParseError::Chunk("line not ended by CRLF"));
            }
            let mut line = buf.split_to(end + 1);
            line.truncate(end - 1);
            Ok(Some(line))
        }
        None if buf.len() > max => Err(ParseError::Chunk("line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line: hex digits, optional whitespace and extensions.
fn chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 {
        return Err(ParseError::Chunk("chunk size"));
    }
    match line[digits_end..]
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t'))
    {
        None | Some(b';') => {}
        Some(_) => return Err(ParseError::Chunk("chunk size")),
    }
    line[..digits_end].iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16).unwrap_or(0) as u64;
        acc.checked_mul(16)
            .and_then(|a| a.checked_add(v))
            .ok_or(ParseError::Chunk("chunk size overflows"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_request: bool) -> Result<Head, ParseError> {
        let mut buf = BytesMut::from(raw);
        loop {
            match parse_head(&mut buf, head_request)? {
                Parsed::Final(h) => return Ok(h),
                Parsed::Interim => continue,
                Parsed::Partial => panic!("partial: {raw:?}"),
            }
        }
    }

    #[test]
    fn a_recycled_request_map_holds_the_next_answer_and_nothing_of_the_request() {
        let pooled = || MAPS.with(|m| m.0.borrow().len());
        let mut request = HeaderMap::with_capacity(8);
        request.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer secret"),
        );
        request.insert(header::HOST, HeaderValue::from_static("push.example"));
        recycle_headers(request);
        assert_eq!(pooled(), 1);
        let answer = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nserver: w1\r\n\r\n",
            false,
        )
        .expect("valid head");
        assert_eq!(pooled(), 0, "the answer took the recycled map");
        assert_eq!(answer.headers.len(), 2);
        assert!(answer.headers.get(header::AUTHORIZATION).is_none());
        assert!(answer.headers.get(header::HOST).is_none());
        assert_eq!(answer.headers["server"], "w1");
        // Bounded: a map with room for many fields is freed, and so is one with none.
        recycle_headers(HeaderMap::with_capacity(POOLED_MAP_MAX * 2));
        recycle_headers(HeaderMap::new());
        let mut repeated = HeaderMap::with_capacity(4);
        for _ in 0..=POOLED_MAP_MAX {
            repeated.append(header::COOKIE, HeaderValue::from_static("a=b"));
        }
        recycle_headers(repeated);
        assert_eq!(pooled(), 0);
        for _ in 0..POOLED_MAPS + 3 {
            recycle_headers(HeaderMap::with_capacity(4));
        }
        assert_eq!(pooled(), POOLED_MAPS);
    }

    #[test]
    fn a_request_head_buffer_is_reused_by_the_next_head_on_its_thread() {
        let first = HeadWriter::new(&Method::GET, "/first").finish(ReqFraming::Chunked);
        let at = first.as_ptr();
        let copy = first.copy();
        assert_eq!(&copy[..], &first[..]);
        drop(copy);
        drop(first);
        // Dropped last, `first`'s buffer is on top of the pool: the next head is written in it.
        let next = HeadWriter::new(&Method::GET, "/next").finish(ReqFraming::Chunked);
        assert_eq!(next.as_ptr(), at);
        assert_eq!(
            &next[..],
            b"GET /next HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // A buffer grown past the bound is freed, not kept.
        let mut big = HeadWriter::new(&Method::GET, "/");
        big.header(b"cookie", &[b'c'; POOLED_HEAD_MAX]);
        let big = big.finish(ReqFraming::Chunked);
        let pooled = || HEADS.with(|h| h.0.borrow().len());
        let before = pooled();
        drop(big);
        assert_eq!(pooled(), before);
        drop(next);
        assert_eq!(pooled(), before + 1);
    }

    #[test]
    fn a_thread_keeps_at_most_its_bound_of_head_buffers() {
        let heads: Vec<RequestHead> = (0..POOLED_HEADS + 6)
            .map(|_| HeadWriter::new(&Method::GET, "/").finish(ReqFraming::Chunked))
            .collect();
        drop(heads);
        assert_eq!(HEADS.with(|h| h.0.borrow().len()), POOLED_HEADS);
    }

    #[test]
    fn a_request_head_ends_with_its_framing() {
        let head = |framing| {
            let mut w = HeadWriter::new(&Method::POST, "/a?b");
            w.header(b"host", b"w1");
            w.header(b"x-forwarded-for", b"1.1.1.1");
            w.extend_value(b", 2.2.2.2");
            String::from_utf8(w.finish(framing).to_vec()).expect("ASCII")
        };
        let start = "POST /a?b HTTP/1.1\r\nhost: w1\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2\r\n";
        assert_eq!(
            head(ReqFraming::Length(12)),
            format!("{start}content-length: 12\r\n\r\n")
        );
        assert_eq!(
            head(ReqFraming::Chunked),
            format!("{start}transfer-encoding: chunked\r\n\r\n")
        );
        assert_eq!(
            head(ReqFraming::Empty { said_length: false }),
            format!("{start}\r\n")
        );
        assert_eq!(
            head(ReqFraming::Empty { said_length: true }),
            format!("{start}content-length: 0\r\n\r\n")
        );
        let mut out = Vec::new();
        push_decimal(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string().as_bytes());
        assert_eq!(&chunk_line(255)[..], b"ff\r\n");
    }

    #[test]
    fn an_answer_head_is_parsed_and_its_hop_by_hop_headers_dropped() {
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: a\r\nX-Kept: b\r\n\r\nok",
            false,
        )
        .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.keep_alive);
        assert_eq!(h.headers.len(), 3, "{:?}", h.headers);
        assert_eq!(h.headers.get_all("x-kept").iter().count(), 2);
        assert_eq!(h.headers[header::CONTENT_LENGTH], "2");
    }

    #[test]
    fn the_body_of_an_answer_is_framed_as_rfc_9112_says() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Framing::Close,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::Close, false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(3),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Length(3),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive\r\n\r\n",
                false,
                Framing::Length(3),
                true,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Close,
                false,
            ),
        ];
        for (raw, head_request, framing, keep_alive) in cases {
            let h = head(raw, head_request).unwrap();
            assert_eq!((h.framing, h.keep_alive), (framing, keep_alive), "{raw:?}");
            if raw.contains("chunked") {
                assert!(!h.headers.contains_key(header::CONTENT_LENGTH), "{raw:?}");
            }
        }
    }

    #[test]
    fn repeated_lengths_reach_the_client_as_one_number() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 03\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 003\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:  3 \r\n\r\n",
        ] {
            let h = head(raw, false).unwrap();
            let lengths: Vec<_> = h.headers.get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, ["3"], "{raw:?}");
        }
    }

    #[test]
    fn only_digits_without_a_leading_zero_are_a_length_as_written() {
        for yes in ["0", "7", "10", "18446744073709551615"] {
            assert!(is_decimal(yes.as_bytes()), "{yes}");
        }
        for no in ["", "00", "07", "1 ", "+1", "1,1", "x"] {
            assert!(!is_decimal(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_upgrades_refused() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(matches!(parse_head(&mut buf, false), Ok(Parsed::Interim)));
        let Ok(Parsed::Final(h)) = parse_head(&mut buf, false) else {
            panic!("final answer expected");
        };
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(buf.is_empty());
        let mut up = BytesMut::from("HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(parse_head(&mut up, false).is_err());
    }

    #[test]
    fn bad_answer_heads_are_errors_and_partial_ones_wait() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            assert!(parse_head(&mut buf, false).is_err(), "{raw:?}");
        }
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(matches!(
            parse_head(&mut partial, false),
            Ok(Parsed::Partial)
        ));
        let mut huge = BytesMut::from("HTTP/1.1 200 OK\r\n");
        huge.extend_from_slice(&vec![b'a'; MAX_HEAD]);
        assert_eq!(
            parse_head(&mut huge, false).unwrap_err(),
            ParseError::TooLarge
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        let mut buf = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_str());
        assert_eq!(
            parse_head(&mut buf, false).unwrap_err(),
            ParseError::TooLarge
        );
    }

    fn decode_all(wire: &[u8], step: usize) -> Result<Vec<u8>, ParseError> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done => return Ok(body),
                Decoded::NeedMore if fed >= wire.len() => return Err(ParseError::Chunk("eof")),
                Decoded::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn a_chunked_body_decodes_whatever_the_reads_cut() {
        let wire =
            b"5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            assert_eq!(
                decode_all(wire, step).unwrap(),
                b"helloabcdefghijklmnopqrstuvwxyz",
                "step {step}"
            );
        }
    }

    #[test]
    fn a_malformed_chunked_body_is_an_error() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffffffff\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(wire, 4).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(&long, long.len()).is_err());
    }
}
