"""HAR 1.2 output, valid on disk after every entry.

The file always ends with the trailer that closes the entries array and the two
objects around it.  Each new entry is written over that trailer together with a fresh
trailer, in a single write, then flushed; so Ctrl-C, SIGTERM, or a crash between two
entries leaves a file that browser devtools and HAR tools open.  When the stream cannot
be rewritten (a pipe, or a file opened for append) entries are streamed and the
trailer is written by close().

Bodies follow the HAR convention: response content is decoded (gzip/deflate) text,
or base64 with "encoding": "base64"; bodySize is the size on the wire after
de-chunking.  httptrace-specific facts go in "_"-prefixed fields, as HAR allows.
"""
from __future__ import annotations

import base64
import datetime
import email.utils
import fcntl
import json
import os
import re
from typing import IO, Any, Iterable
from urllib.parse import parse_qsl, quote

from httptrace.exchange import Endpoint, Exchange, Message, Role
from httptrace.output import (
    OutputOptions, body_as_text, decoded_content, endpoint_text, httptrace_version, iso_utc,
)
from httptrace.redact import Redactor

TRAILER = b"\n]}}\n"

_URL_SAFE = "/?#[]@!$&'()*+,;=:%-._~"


def _quote(text: str, safe: str) -> str:
    """Percent-encode for a URL; header and target text is latin-1 decoded wire bytes."""
    try:
        return quote(text, safe=safe, encoding="latin-1")
    except UnicodeEncodeError:
        return quote(text, safe=safe, encoding="utf-8")


def har_header() -> bytes:
    log_start = {"version": "1.2", "creator": {"name": "httptrace", "version": httptrace_version()}, "pages": []}
    # '{"log": {..., "pages": []' + ', "entries": [' : the entries array stays open
    return (json.dumps({"log": log_start})[:-2] + ', "entries": [').encode()


def _ms(ns: int) -> float:
    return round(max(0, ns) / 1_000_000, 3)


def server_endpoint(exchange: Exchange) -> Endpoint | None:
    """The HTTP server's address: the peer for a traced client, ourselves for a traced server."""
    connection = exchange.connection
    return connection.local if connection.role is Role.SERVER else connection.remote


def client_endpoint(exchange: Exchange) -> Endpoint | None:
    connection = exchange.connection
    return connection.remote if connection.role is Role.SERVER else connection.local


_PORT_SUFFIX = re.compile(r"(.*?)(:[0-9]{1,5})?")
_IP_LITERAL = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_REG_NAME_SAFE = "!$&'()*+,;=-._~"


def _authority(host: str) -> str:
    """A Host header value made safe as a URL authority: "[", "@", "/" and friends from a
    malformed header are percent-encoded instead of changing what the URL means.
    Empty when nothing usable is left."""
    match = _PORT_SUFFIX.fullmatch(host.strip())
    name, port = match.groups() if match is not None else ("", None)   # None: a line break in it
    if not name:
        return ""
    if _IP_LITERAL.fullmatch(name):
        return name + (port or "")
    return _quote(name, _REG_NAME_SAFE) + (port or "")


def request_url(exchange: Exchange) -> str:
    """Absolute URL: scheme from the connection's TLS-ness (or HTTP/2's :scheme), authority from
    Host or :authority (or the server address when there is neither), then the request target."""
    request = exchange.request
    scheme = "https" if exchange.connection.tls else "http"
    if request.header(":scheme") in ("http", "https"):
        scheme = request.header(":scheme")
    target = request.target or "/"
    if target[:8].lower().startswith(("http://", "https://")):     # absolute-form (proxy requests)
        scheme, rest = target.split("://", 1)
        cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
        host, target = _authority(rest[:cut]), rest[cut:] or "/"
    else:
        host = _authority(request.header(":authority") or request.header("host") or "")
    if not host:
        server = server_endpoint(exchange)
        if server is None:
            host = "unknown-host"
        elif server.port == (443 if scheme == "https" else 80):
            host = f"[{server.ip}]" if ":" in server.ip else server.ip
        else:
            host = endpoint_text(server.ip, server.port)
    if request.method == "CONNECT" or target == "*":   # authority-form / asterisk-form
        return f"{scheme.lower()}://{host}/"
    if not target.startswith("/"):
        target = "/" + target
    return f"{scheme.lower()}://{host}{_quote(target, _URL_SAFE)}"


def _query_string(target: str | None) -> list[dict[str, str]]:
    if not target or "?" not in target:
        return []
    query = target.split("?", 1)[1].split("#", 1)[0]
    return [{"name": n, "value": v} for n, v in parse_qsl(query, keep_blank_values=True, errors="replace")]


def _request_cookies(headers: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    cookies = []
    for name, value in headers:
        if name.lower() == "cookie":
            for pair in value.split(";"):
                cookie_name, sep, cookie_value = pair.strip().partition("=")
                if sep and cookie_name:
                    cookies.append({"name": cookie_name, "value": cookie_value})
    return cookies


def _response_cookies(headers: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    cookies = []
    for name, value in headers:
        if name.lower() != "set-cookie":
            continue
        first, *attributes = value.split(";")
        cookie_name, sep, cookie_value = first.strip().partition("=")
        if not (sep and cookie_name):
            continue
        cookie: dict[str, Any] = {"name": cookie_name, "value": cookie_value}
        for attribute in attributes:
            key, _, attr_value = attribute.strip().partition("=")
            key = key.lower()
            if key in ("path", "domain"):
                cookie[key] = attr_value
            elif key == "httponly":
                cookie["httpOnly"] = True
            elif key == "secure":
                cookie["secure"] = True
            elif key == "expires":
                try:
                    expires = email.utils.parsedate_to_datetime(attr_value)
                except (TypeError, ValueError, IndexError):
                    continue
                if expires.tzinfo is None:   # "-0000" zone: UTC with unknown origin
                    expires = expires.replace(tzinfo=datetime.timezone.utc)
                cookie["expires"] = expires.isoformat()
        cookies.append(cookie)
    return cookies


def _headers_size(message: Message) -> int:
    """Bytes up to and including the blank line, rebuilt from the parsed head.  HTTP/1
    peers almost always write "Name: value" with CRLF, so this matches the wire.  HTTP/2
    headers travel HPACK-compressed: -1 (unknown), as HAR allows."""
    if message.version == "HTTP/2":
        return -1
    if message.method is not None:
        start = len(message.method) + len(message.target or "") + len(message.version) + 2
    else:
        start = len(message.version) + 4 + (len(message.reason) + 1 if message.reason else 0)
    return start + 2 + sum(len(n) + len(v) + 4 for n, v in message.headers) + 2


def _text_and_encoding(data: bytes, truncated: bool) -> tuple[str, str | None]:
    text = body_as_text(data, truncated)
    if text is not None:
        return text, None
    return base64.b64encode(data).decode("ascii"), "base64"


def _post_data(request: Message, include_bodies: bool) -> dict[str, Any] | None:
    if not request.body_size and not request.body:
        return None
    post: dict[str, Any] = {"mimeType": request.header("content-type") or ""}
    if include_bodies:
        data, _ = decoded_content(request)
        text, encoding = _text_and_encoding(data, request.truncated)
        post["text"] = text
        if encoding:
            post["_encoding"] = encoding   # HAR 1.2 has no encoding field for postData
    return post


def _content(response: Message, include_bodies: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"size": response.body_size,
                               "mimeType": response.header("content-type") or "x-unknown"}
    if not include_bodies:
        return content
    data, decoded = decoded_content(response)
    if decoded and not response.truncated:
        content["size"] = len(data)
        content["compression"] = len(data) - response.body_size
    if data or not response.body_size:
        text, encoding = _text_and_encoding(data, response.truncated)
        content["text"] = text
        if encoding:
            content["encoding"] = encoding
    if response.truncated:
        content["comment"] = f"body truncated by capture: {len(response.body)} of {response.body_size} bytes"
    return content


_NO_RESPONSE = {
    "status": 0, "statusText": "", "httpVersion": "", "cookies": [], "headers": [],
    "content": {"size": 0, "mimeType": "x-unknown"}, "redirectURL": "",
    "headersSize": -1, "bodySize": -1, "comment": "no response captured",
}


def exchange_to_har_entry(exchange: Exchange, redactor: Redactor, include_bodies: bool = True) -> dict[str, Any]:
    """One HAR 1.2 entry (a dict ready for json.dumps)."""
    connection = exchange.connection
    request = exchange.request
    response = exchange.response
    request_headers = redactor.headers(request.headers)

    har_request: dict[str, Any] = {
        "method": request.method or "",
        "url": request_url(exchange),
        "httpVersion": _http_version(request),
        "cookies": _request_cookies(request_headers),
        "headers": [{"name": n, "value": v} for n, v in request_headers],
        "queryString": _query_string(request.target),
        "headersSize": _headers_size(request),
        "bodySize": request.body_size,
    }
    post_data = _post_data(request, include_bodies)
    if post_data is not None:
        har_request["postData"] = post_data

    send = _ms(request.last_byte_ns - request.first_byte_ns)
    if response is None:
        har_response: dict[str, Any] = dict(_NO_RESPONSE)
        wait = receive = 0.0
    else:
        response_headers = redactor.headers(response.headers)
        if response.version == "HTTP/2":    # :status is `status`; request pseudo-headers stay, as Chrome exports
            response_headers = tuple(field for field in response_headers if field[0] != ":status")
        har_response = {
            "status": response.status or 0,
            "statusText": response.reason or "",
            "httpVersion": _http_version(response),
            "cookies": _response_cookies(response_headers),
            "headers": [{"name": n, "value": v} for n, v in response_headers],
            "content": _content(response, include_bodies),
            "redirectURL": response.header("location") or "",
            "headersSize": _headers_size(response),
            "bodySize": response.body_size,
        }
        wait = _ms(response.first_byte_ns - request.last_byte_ns)
        receive = _ms(response.last_byte_ns - response.first_byte_ns)

    entry: dict[str, Any] = {
        "startedDateTime": iso_utc(request.first_byte_ns),
        "time": round(send + wait + receive, 3),
        "request": har_request,
        "response": har_response,
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1,
                    "send": send, "wait": wait, "receive": receive},
    }
    server = server_endpoint(exchange)
    if server is not None:
        entry["serverIPAddress"] = server.ip
    client = client_endpoint(exchange)
    if client is not None:
        entry["connection"] = str(client.port)   # HAR suggests the client port
    flags = sorted(flag.value for flag in exchange.flags)
    if flags:
        entry["comment"] = "httptrace flags: " + ", ".join(flags)
    entry["_pid"] = connection.pid
    entry["_comm"] = connection.comm
    entry["_role"] = connection.role.value
    entry["_flags"] = flags
    if exchange.stream_id is not None:
        entry["_stream_id"] = exchange.stream_id
    if exchange.reset_code is not None:
        entry["_reset_code"] = exchange.reset_code
    if exchange.grpc is not None:
        entry["_grpc"] = exchange.grpc._asdict()
    for har_message, message in ((har_request, request), (har_response, response)):
        if message is not None and message.trailers:
            har_message["_trailers"] = [{"name": n, "value": v} for n, v in redactor.headers(message.trailers)]
    return entry


def _http_version(message: Message) -> str:
    return "HTTP/2.0" if message.version == "HTTP/2" else message.version


def _can_rewrite(stream: IO[bytes]) -> bool:
    """Seeking back over the trailer needs a seekable stream not opened for append
    (with O_APPEND every write lands at the end, whatever the position)."""
    try:
        if not stream.seekable():
            return False
    except (OSError, ValueError):
        return False
    try:
        fd = stream.fileno()
    except (OSError, ValueError):   # in-memory stream: seekable and never appending
        return True
    return not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND


class HarWriter:
    """Writes a HAR 1.2 document to a binary stream, valid after every write()."""

    def __init__(self, stream: IO[bytes], options: OutputOptions):
        self._stream = stream
        self._redactor = options.redactor
        self._include_bodies = options.include_bodies
        self._rewrite = _can_rewrite(stream)
        self._entries = 0
        self._closed = False
        stream.write(har_header())
        if self._rewrite:
            self._trailer_at = stream.tell()
            stream.write(TRAILER)
        stream.flush()

    @property
    def entries(self) -> int:
        return self._entries

    def write(self, exchange: Exchange) -> None:
        entry = exchange_to_har_entry(exchange, self._redactor, self._include_bodies)
        blob = (b",\n" if self._entries else b"\n") + json.dumps(entry).encode()
        if self._rewrite:
            self._stream.seek(self._trailer_at)
            self._stream.write(blob + TRAILER)     # one write: never a file without its trailer
            self._trailer_at += len(blob)
        else:
            self._stream.write(blob)
        self._entries += 1
        self._stream.flush()   # valid on disk after every entry, not only after every batch

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._rewrite:
            self._stream.write(TRAILER)
        self._stream.flush()
