#!/usr/bin/env python3
"""Opens N keep-alive client connections to a proxy, sends one request on each (HTTP/1.1, or
HTTP/2 with prior knowledge), reads its answer, and keeps them open and idle until stdin
closes. Prints "ready N" once every connection has had its answer. Used by benches/memory.sh.

    idle_clients.py HOST:PORT N h1|h2
"""
import selectors
import socket
import struct
import sys

addr, count, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, port = addr.rsplit(":", 1)
port = int(port)


def h1_request():
    return f"GET / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer idle\r\n\r\n".encode()


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_literal(name, value):
    """A literal header field without indexing, with a literal name (RFC 7541 §6.2.2)."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def h2_request():
    # :method GET, :scheme http, :path / are indexed static table entries (2, 6, 4).
    block = b"\x82\x86\x84" + hpack_literal(":authority", addr)
    block += hpack_literal("authorization", "Bearer idle")
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    return preface + frame(4, 0, 0) + frame(1, 0x5, 1, block)


def answered(buf):
    """Whether `buf` holds a complete answer (HTTP/1.1 head and a short body, or an HTTP/2
    frame ending stream 1)."""
    if proto == "h1":
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return False
        head = buf[:head_end].lower()
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                return len(buf) >= head_end + 4 + int(line.split(b":")[1])
        return True
    pos = 0
    while pos + 9 <= len(buf):
        length = int.from_bytes(buf[pos:pos + 3], "big")
        kind, flags = buf[pos + 3], buf[pos + 4]
        stream = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        if pos + 9 + length > len(buf):
            return False
        if stream == 1 and flags & 0x1 and kind in (0, 1):
            return True
        pos += 9 + length
    return False


def status_200(buf):
    """Whether the complete answer in `buf` is a 200: an idle connection measured after a 503
    (a proxy without a ready backend) would not be the connection the benchmark is about. Over
    HTTP/2, the first HEADERS frame of stream 1 must begin with `:status 200` as HPACK's
    indexed static entry 8 (0x88), as nginx, HAProxy and hyper encode it."""
    if proto == "h1":
        return buf.startswith(b"HTTP/1.1 200 ")
    pos = 0
    while pos + 9 <= len(buf):
        length = int.from_bytes(buf[pos:pos + 3], "big")
        kind = buf[pos + 3]
        stream = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        if kind == 1 and stream == 1:
            return length > 0 and buf[pos + 9] == 0x88
        pos += 9 + length
    return False


sel = selectors.DefaultSelector()
conns = []
request = h1_request() if proto == "h1" else h2_request()
pending = 0
for _ in range(count):
    s = socket.create_connection((host, port))
    s.sendall(request)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, bytearray())
    conns.append(s)
    pending += 1
    # Keep the number of requests in flight small, as idle agents would.
    while pending > 64 or (len(conns) == count and pending):
        for key, _ in sel.select(timeout=10):
            data = key.fileobj.recv(65536)
            if not data:
                sys.exit(f"connection closed before its answer: {bytes(key.data)[:200]!r}")
            key.data.extend(data)
            if answered(bytes(key.data)):
                if not status_200(bytes(key.data)):
                    sys.exit(f"an answer other than 200: {bytes(key.data)[:200]!r}")
                if proto == "h2":
                    # Acknowledge the server's SETTINGS, as a client does.
                    key.fileobj.sendall(frame(4, 0x1, 0))
                sel.unregister(key.fileobj)
                pending -= 1
print(f"ready {len(conns)}", flush=True)
sys.stdin.read()
