"""JSON Lines output: one object per exchange, field names are a public contract.

Bodies are the captured bytes after de-chunking, with Content-Encoding NOT undone, so
`body`, `body_size` and the Content-Encoding header always agree: UTF-8 bodies appear
as text, anything else as base64 (`body_encoding` says which).  See docs/cli.md.
"""
from __future__ import annotations

import base64
import json
from typing import IO, Any

from httptrace.exchange import Endpoint, Exchange, Message
from httptrace.output import OutputOptions, body_as_text, iso_utc
from httptrace.redact import Redactor

_encode = json.JSONEncoder(ensure_ascii=True, check_circular=False).encode


def _endpoint(endpoint: Endpoint | None) -> dict[str, Any] | None:
    return None if endpoint is None else {"ip": endpoint.ip, "port": endpoint.port}


def _body_fields(message: Message, include_bodies: bool) -> tuple[str | None, str | None]:
    if not include_bodies:
        return None, None
    text = body_as_text(message.body, message.truncated)
    if text is not None:
        return text, "utf-8"
    return base64.b64encode(message.body).decode("ascii"), "base64"


def exchange_to_dict(exchange: Exchange, redactor: Redactor, include_bodies: bool = True) -> dict[str, Any]:
    """The JSON object for one exchange (also what tests and other tools can reuse)."""
    connection = exchange.connection
    request = exchange.request
    response = exchange.response
    latency = exchange.latency_ns

    body, body_encoding = _body_fields(request, include_bodies)
    request_obj = {
        "method": request.method,
        "target": request.target,
        "version": request.version,
        "headers": redactor.headers(request.headers),   # tuples serialise as JSON arrays
        "body": body,
        "body_encoding": body_encoding,
        "body_size": request.body_size,
        "truncated": request.truncated,
    }
    if response is None:
        response_obj = None
    else:
        body, body_encoding = _body_fields(response, include_bodies)
        response_obj = {
            "status": response.status,
            "reason": response.reason,
            "version": response.version,
            "headers": redactor.headers(response.headers),
            "body": body,
            "body_encoding": body_encoding,
            "body_size": response.body_size,
            "truncated": response.truncated,
        }
    return {
        "time": iso_utc(request.first_byte_ns),
        "pid": connection.pid,
        "comm": connection.comm,
        "role": connection.role.value,
        "local": _endpoint(connection.local),
        "remote": _endpoint(connection.remote),
        "tls": connection.tls,
        "latency_ms": None if latency is None else round(latency / 1_000_000, 3),
        "request": request_obj,
        "response": response_obj,
        "flags": sorted(flag.value for flag in exchange.flags) if exchange.flags else [],
    }


def exchange_to_json(exchange: Exchange, redactor: Redactor, include_bodies: bool = True) -> str:
    """One JSON Lines record, without the newline."""
    return _encode(exchange_to_dict(exchange, redactor, include_bodies))


class JsonLinesWriter:
    """Writes one line per exchange to a text stream and flushes it."""

    def __init__(self, stream: IO[str], options: OutputOptions):
        self._stream = stream
        self._redactor = options.redactor
        self._include_bodies = options.include_bodies

    def write(self, exchange: Exchange) -> None:
        self._stream.write(_encode(exchange_to_dict(exchange, self._redactor, self._include_bodies)) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
