"""JSON Lines output: one object per exchange, field names are a public contract.

Bodies are the captured bytes after de-chunking, with Content-Encoding NOT undone, so
`body`, `body_size` and the Content-Encoding header always agree: UTF-8 bodies appear
as text, anything else as base64 (`body_encoding` says which).  See docs/cli.md.
"""
from __future__ import annotations

import base64
import json
from typing import IO, Any

from httptrace.exchange import Connection, Endpoint, Exchange, Message
from httptrace.output import OutputOptions, body_as_text, iso_utc
from httptrace.redact import Redactor


def _strict_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_SELF_TEST = {"a": [1, 2.5, None, True], "b": (("x", "caf\xe9 \u20ac\n"),), "c": {"d": -0.001}}


def _make_encoder():
    """json.dumps builds a new C encoder on every call; build it once.  Its constructor is
    private and changed between Python versions, so the result must match json.dumps on a
    sample or the plain (slower) public encoder is used."""
    fallback = json.JSONEncoder(check_circular=False).encode
    try:
        encoder = json.encoder.c_make_encoder(None, _strict_default, json.encoder.encode_basestring_ascii,
                                              None, ": ", ", ", False, False, True)

        def encode(value: Any) -> str:
            return "".join(encoder(value, 0))

        if encode(_SELF_TEST) == json.dumps(_SELF_TEST):
            return encode
    except Exception:  # no C accelerator, or another signature: use the public API
        pass
    return fallback


_encode = _make_encoder()


def _endpoint(endpoint: Endpoint | None) -> dict[str, Any] | None:
    return None if endpoint is None else {"ip": endpoint.ip, "port": endpoint.port}


def _connection_fields(connection: Connection) -> dict[str, Any]:
    return {
        "pid": connection.pid,
        "comm": connection.comm,
        "role": connection.role.value,
        "local": _endpoint(connection.local),
        "remote": _endpoint(connection.remote),
        "tls": connection.tls,
    }


def _body_fields(message: Message, include_bodies: bool) -> tuple[str | None, str | None]:
    if not include_bodies:
        return None, None
    text = body_as_text(message.body, message.truncated)
    if text is not None:
        return text, "utf-8"
    return base64.b64encode(message.body).decode("ascii"), "base64"


def _exchange_fields(exchange: Exchange, redactor: Redactor, include_bodies: bool) -> dict[str, Any]:
    """Everything after the connection's fields: latency, request, response, flags."""
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
        "latency_ms": None if latency is None else round(latency / 1_000_000, 3),
        "request": request_obj,
        "response": response_obj,
        "flags": sorted(flag.value for flag in exchange.flags) if exchange.flags else [],
    }


def exchange_to_dict(exchange: Exchange, redactor: Redactor, include_bodies: bool = True) -> dict[str, Any]:
    """The JSON object for one exchange, as a dict (for tools that post-process)."""
    return {"time": iso_utc(exchange.request.first_byte_ns),
            **_connection_fields(exchange.connection),
            **_exchange_fields(exchange, redactor, include_bodies)}


# A keep-alive connection carries many exchanges: its fields are encoded once.  Keyed by
# id() with the object kept alongside, so a reused id can never return a stale fragment.
_CONNECTION_CACHE_LIMIT = 4096
_connection_fragments: dict[int, tuple[Connection, str]] = {}


def _connection_fragment(connection: Connection) -> str:
    cached = _connection_fragments.get(id(connection))
    if cached is not None and cached[0] is connection:
        return cached[1]
    fragment = _encode(_connection_fields(connection))[1:-1]   # '"pid": 1, ..., "tls": false'
    if len(_connection_fragments) >= _CONNECTION_CACHE_LIMIT:
        _connection_fragments.clear()
    _connection_fragments[id(connection)] = (connection, fragment)
    return fragment


def exchange_to_json(exchange: Exchange, redactor: Redactor, include_bodies: bool = True) -> str:
    """One JSON Lines record without the newline; the same object as exchange_to_dict,
    spliced from pieces because this runs once per exchange on the hot path."""
    rest = _encode(_exchange_fields(exchange, redactor, include_bodies))
    return (f'{{"time": "{iso_utc(exchange.request.first_byte_ns)}", '
            f'{_connection_fragment(exchange.connection)}, {rest[1:]}')


class JsonLinesWriter:
    """Writes one line per exchange to a text stream and flushes it."""

    def __init__(self, stream: IO[str], options: OutputOptions):
        self._stream = stream
        self._redactor = options.redactor
        self._include_bodies = options.include_bodies

    def write(self, exchange: Exchange) -> None:
        self._stream.write(exchange_to_json(exchange, self._redactor, self._include_bodies) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
