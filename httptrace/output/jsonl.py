"""JSON Lines output: one object per exchange, field names are a public contract.

Bodies are the captured bytes after de-chunking, with Content-Encoding NOT undone, so
`body`, `body_size` and the Content-Encoding header always agree: UTF-8 bodies appear
as text, anything else as base64 (`body_encoding` says which).  See docs/cli.md.

Lines are compact UTF-8 JSON written by orjson: the stdlib encoder took about 4 µs for a
small exchange and 30 ms for a 10 MB body, which made it the agent's largest single cost.
"""
from __future__ import annotations

import base64
import functools
from typing import IO, Any, Iterable

import orjson

from httptrace.exchange import Connection, Endpoint, Exchange, Message
from httptrace.output import OutputOptions, body_as_text, iso_utc
from httptrace.redact import Redactor


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


def _message_fields(message: Message, redactor: Redactor, include_bodies: bool) -> dict[str, Any]:
    body = message.body
    if not include_bodies:
        text = encoding = None
    elif not body:
        text, encoding = "", "utf-8"
    else:
        text, encoding = body_as_text(body, message.truncated), "utf-8"
        if text is None:
            text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    fields: dict[str, Any]
    if message.method is not None:
        fields = {"method": message.method, "target": message.target}
    else:
        fields = {"status": message.status, "reason": message.reason}
    fields["version"] = message.version
    fields["headers"] = redactor.headers(message.headers)   # tuples serialise as JSON arrays
    fields["body"] = text
    fields["body_encoding"] = encoding
    fields["body_size"] = message.body_size
    fields["truncated"] = message.truncated
    fields["trailers"] = redactor.headers(message.trailers) if message.trailers else []
    return fields


def exchange_to_dict(exchange: Exchange, redactor: Redactor, include_bodies: bool = True) -> dict[str, Any]:
    """The JSON object for one exchange, as a dict (also for tools that post-process)."""
    record = _connection_dict(exchange.connection, exchange.request.first_byte_ns)
    latency = exchange.latency_ns
    record["latency_ms"] = None if latency is None else round(latency / 1_000_000, 3)
    record["request"] = _message_fields(exchange.request, redactor, include_bodies)
    response = exchange.response
    record["response"] = None if response is None else _message_fields(response, redactor, include_bodies)
    record["flags"] = sorted(flag.value for flag in exchange.flags) if exchange.flags else []
    record["stream_id"] = exchange.stream_id
    record["reset_code"] = exchange.reset_code
    grpc = exchange.grpc
    record["grpc"] = None if grpc is None else grpc._asdict()
    return record


# A keep-alive connection carries many exchanges: its fields are built once.  Keyed by id() with
# the object kept alongside, so a reused id can never return stale fields.
_CONNECTION_CACHE_LIMIT = 4096
_connection_dicts: dict[int, tuple[Connection, dict[str, Any]]] = {}


def _connection_dict(connection: Connection, first_byte_ns: int) -> dict[str, Any]:
    """{"time": ..., then the connection's fields}: a fresh dict, copied from the cached fields."""
    cached = _connection_dicts.get(id(connection))
    if cached is None or cached[0] is not connection:
        if len(_connection_dicts) >= _CONNECTION_CACHE_LIMIT:
            _connection_dicts.clear()
        cached = _connection_dicts[id(connection)] = (connection, {"time": None, **_connection_fields(connection)})
    record = cached[1].copy()
    record["time"] = iso_utc(first_byte_ns)
    return record


@functools.lru_cache(maxsize=16)
def _redactor(extra_names: tuple[str, ...], enabled: bool) -> Redactor:
    return Redactor(extra_names, enabled=enabled)


def exchange_record(exchange: Exchange, *, include_bodies: bool = True, redact: Iterable[str] = (),
                    unredacted: bool = False) -> dict[str, Any]:
    """Exchange.to_dict(): the record of exchange_to_dict() as json.loads() reads it back from the line,
    with lists for header pairs and no dict shared with another record (connections' fields are)."""
    record = exchange_to_dict(exchange, _redactor(tuple(redact), not unredacted), include_bodies)
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(record))
    return loaded


def exchange_to_json(exchange: Exchange, redactor: Redactor, include_bodies: bool = True) -> str:
    """One JSON Lines record as text, without the newline."""
    return orjson.dumps(exchange_to_dict(exchange, redactor, include_bodies)).decode()


# Bodies longer than this are encoded piece by piece, straight to the stream: orjson grows one
# buffer for the whole line, and for a 10 MB body that growth costs more (in page faults) than the
# encoding itself (5.5 ms against 0.9 ms in 1 MiB pieces).
LARGE_BODY = 1 << 20
_PIECE = 1 << 20
_PLACEHOLDER = "\ue000httptrace: large body\ue000"   # private-use characters: not in real headers
_PLACEHOLDER_JSON = orjson.dumps(_PLACEHOLDER)


def _has_large_body(exchange: Exchange) -> bool:
    response = exchange.response
    return len(exchange.request.body) > LARGE_BODY or (response is not None and len(response.body) > LARGE_BODY)


def _write_large_bodies(out: IO[bytes], record: dict[str, Any]) -> bool:
    """Write `record` as one line, its large bodies in pieces; False (nothing written) if it has none."""
    messages = [m for m in (record["request"], record["response"])
                if m is not None and m["body"] is not None and len(m["body"]) > LARGE_BODY]
    if not messages:
        return False
    bodies = [m["body"] for m in messages]
    for m in messages:
        m["body"] = _PLACEHOLDER
    line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    rest = line.split(_PLACEHOLDER_JSON)
    if len(rest) != len(bodies) + 1:   # the placeholder occurs elsewhere too: encode the usual way
        for m, body in zip(messages, bodies):
            m["body"] = body
        return False
    out.write(rest[0])
    for body, after in zip(bodies, rest[1:]):
        out.write(b'"')
        for at in range(0, len(body), _PIECE):
            out.write(memoryview(orjson.dumps(body[at:at + _PIECE]))[1:-1])   # without its quotes
        out.write(b'"')
        out.write(after)
    return True


class JsonLinesWriter:
    """Writes one line per exchange; flush() (the CLI calls it after each batch) makes them visible."""

    def __init__(self, stream: IO[str], options: OutputOptions):
        self._text = stream
        # Straight to the bytes underneath a text stream, so the UTF-8 is not decoded and encoded again.
        self._binary = getattr(stream, "buffer", None)
        self._redactor = options.redactor
        self._include_bodies = options.include_bodies

    def write(self, exchange: Exchange) -> None:
        if self._binary is not None:
            record = exchange_to_dict(exchange, self._redactor, self._include_bodies)
            if not (_has_large_body(exchange) and _write_large_bodies(self._binary, record)):
                self._binary.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        else:
            self._text.write(exchange_to_json(exchange, self._redactor, self._include_bodies) + "\n")

    def flush(self) -> None:
        if self._binary is not None:
            self._binary.flush()
        self._text.flush()

    def close(self) -> None:
        self.flush()
