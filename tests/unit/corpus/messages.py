"""Tricky but valid HTTP/1.x conversations, with what the reassembler should make of them.

Each case is what a client wrote (`client`) and what the server wrote back (`server`), and the
exchanges expected, summarised by `summary()`: (method, target, status, request body, response body,
sorted flag names).  `close` says the server's bytes end with the connection closing.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    client: bytes
    server: bytes
    expected: tuple
    close: bool = False


def summary(exchange) -> tuple:
    request, response = exchange.request, exchange.response
    return (request.method, request.target, response.status if response else None, request.body,
            response.body if response else None, tuple(sorted(flag.value for flag in exchange.flags)))


CASES = [
    Case("simple-get",
         b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
         (("GET", "/index.html", 200, b"", b"hello", ()),)),
    Case("repeated-headers",
         b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nAccept: text/plain\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
         (("GET", "/", 200, b"", b"", ()),)),
    Case("obs-fold",
         b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: first\r\n  second\r\n\tthird\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Folded: one\r\n two\r\n\r\nok",
         (("GET", "/", 200, b"", b"ok", ()),)),
    Case("chunked-extensions-trailers",
         b"GET /stream HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
         b"5;name=value\r\nhello\r\n6 ; quoted=\"a;b\"\r\n world\r\nA\r\n0123456789\r\n"
         b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n",
         (("GET", "/stream", 200, b"", b"hello world0123456789", ()),)),
    Case("chunked-request",
         b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
         b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
         (("POST", "/upload", 201, b"abcde", b"", ()),)),
    Case("head-then-get",
         b"HEAD /big HTTP/1.1\r\nHost: a\r\n\r\nGET /small HTTP/1.1\r\nHost: a\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
         (("HEAD", "/big", 200, b"", b"", ()), ("GET", "/small", 200, b"", b"ok", ()))),
    Case("100-continue",
         b"POST /form HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndata",
         b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
         (("POST", "/form", 200, b"data", b"done", ()),)),
    Case("several-1xx",
         b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
         b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
         b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
         (("GET", "/", 200, b"", b"x", ()),)),
    Case("204-304-no-body",
         b"DELETE /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\n"
         b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n",
         b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"
         b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\n\r\n"
         b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
         (("DELETE", "/a", 204, b"", b"", ()), ("GET", "/b", 304, b"", b"", ()), ("GET", "/c", 200, b"", b"abc", ()))),
    Case("pipelined",
         b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz"
         b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"
         b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\n3",
         (("GET", "/1", 200, b"", b"1", ()), ("POST", "/2", 200, b"xyz", b"2", ()), ("GET", "/3", 404, b"", b"3", ()))),
    Case("http10-close-delimited",
         b"GET /old HTTP/1.0\r\nUser-Agent: x\r\n\r\n",
         b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end\r\n\r\nof the connection",
         (("GET", "/old", 200, b"", b"until the end\r\n\r\nof the connection", ()),),
         close=True),
    Case("upgrade-websocket",
         b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
         b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58GET /not-http HTTP/1.1\r\n\r\n",
         b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
         b"\x81\x05HelloHTTP/1.1 200 OK\r\n\r\n",
         (("GET", "/chat", 101, b"", b"", ("upgraded",)),)),
    Case("upgrade-refused",
         b"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
         (("GET", "/a", 200, b"", b"a", ()), ("GET", "/b", 200, b"", b"b", ()))),
    Case("connect-tunnel",
         b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
         b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03\x00\x7a\x02\x00\x00\x76",
         (("CONNECT", "example.com:443", 200, b"", b"", ("upgraded",)),)),
    Case("bare-lf",
         b"GET /lf HTTP/1.1\nHost: a\n\n",
         b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
         (("GET", "/lf", 200, b"", b"abc", ()),)),
    Case("crlf-between-messages",
         b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
         (("POST", "/a", 200, b"x", b"", ()), ("GET", "/b", 200, b"", b"", ()))),
    Case("latin1-and-no-reason",
         b"GET /caf\xe9 HTTP/1.1\r\nX-Name: Jos\xe9\r\n\r\n",
         b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
         (("GET", "/caf\xe9", 200, b"", b"", ()),)),
    Case("malformed-header-then-valid",
         b"GET /bad HTTP/1.1\r\nHost a\r\n\r\nGET /good HTTP/1.1\r\nHost: a\r\n\r\n",
         b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
         (("GET", "/good", 200, b"", b"ok", ("parse_error",)),)),
    Case("malformed-request-line",
         b"GET /a HTTP/1.1\r\n\r\nGARBAGE LINE\r\nGET /b HTTP/1.1\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
         b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb",
         (("GET", "/a", 200, b"", b"", ()), ("GET", "/b", 200, b"", b"b", ("parse_error",)))),
    Case("gzip-body-kept-raw",
         b"GET /gz HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
         b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 23\r\n\r\n"
         b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00abc",
         (("GET", "/gz", 200, b"", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00abc",
           ()),)),
]
