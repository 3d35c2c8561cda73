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
import operator
from typing import IO, TYPE_CHECKING, Any, Iterable

import orjson

from httptrace.exchange import Connection, Endpoint, Exchange, Flag, Message
from httptrace.output import OutputOptions, body_as_text, container_resolver, iso_utc
from httptrace.redact import Redactor

if TYPE_CHECKING:
    from httptrace.containers import ContainerResolver


def _endpoint(endpoint: Endpoint | None) -> dict[str, Any] | None:
    return None if endpoint is None else {"ip": endpoint.ip, "port": endpoint.port}


def _container_field(connection: Connection,
                     containers: ContainerResolver | None = None) -> dict[str, Any] | None:
    if containers is None:
        from httptrace.containers import default_resolver
        containers = default_resolver()
    container = containers.for_connection(connection)
    return None if container is None else container.as_dict()


def _message_fields(message: Message, redactor: Redactor, include_bodies: bool) -> dict[str, Any]:
    body = message.body
    if not include_bodies:
        text = encoding = None
    elif not body:
        text, encoding = "", "utf-8"
    else:
        encoding = "utf-8"
        if message.truncated:
            text = body_as_text(body, True)
        else:
            try:
                text = body.decode("utf-8")     # (body_as_text, inlined: this runs per message)
            except UnicodeDecodeError:
                text = None
        if text is None:
            text, encoding = base64.b64encode(body).decode("ascii"), "base64"
    headers = message.headers
    if redactor.enabled and not redactor.plain.issuperset(map(_name, headers)):
        headers = redactor.headers(headers)    # (the usual case, every name seen before and none sensitive, inlined)
    trailers = message.trailers
    # One dict display per shape, in the field order of the contract (docs/cli.md).
    if message.method is not None:
        return {"method": message.method, "target": message.target, "version": message.version,
                "headers": headers,     # tuples serialise as JSON arrays
                "body": text, "body_encoding": encoding, "body_size": message.body_size,
                "truncated": message.truncated, "trailers": redactor.headers(trailers) if trailers else []}
    return {"status": message.status, "reason": message.reason, "version": message.version, "headers": headers,
            "body": text, "body_encoding": encoding, "body_size": message.body_size,
            "truncated": message.truncated, "trailers": redactor.headers(trailers) if trailers else []}


_name = operator.itemgetter(0)
_flag_lists: dict[frozenset[Flag], list[str]] = {}   # the few flag sets that occur -> their sorted values


def exchange_to_dict(exchange: Exchange, redactor: Redactor, include_bodies: bool = True,
                     containers: ContainerResolver | None = None) -> dict[str, Any]:
    """The JSON object for one exchange, as a dict (also for tools that post-process).
    containers: the ContainerResolver for the `container` field (default: the process-wide one)."""
    connection = exchange.connection
    request = exchange.request
    response = exchange.response
    cached = _connection_cache.get(id(connection))
    if cached is None or cached[0] is not connection:
        cached = _cache_connection(connection, containers)
    flags = exchange.flags
    if flags:
        flag_list = _flag_lists.get(flags)
        if flag_list is None:
            flag_list = _flag_lists[flags] = sorted(flag.value for flag in flags)
        flag_list = flag_list.copy()
    else:
        flag_list = []
    container = cached[7]
    grpc = exchange.grpc
    # One dict display, in the field order of the contract; "container" was added last.
    return {"time": iso_utc(request.first_byte_ns), "pid": cached[1], "comm": cached[2], "role": cached[3],
            "local": cached[4], "remote": cached[5], "tls": cached[6],
            "latency_ms": None if response is None
            else round(max(0, response.last_byte_ns - request.first_byte_ns) / 1_000_000, 3),   # Exchange.latency_ns
            "request": _message_fields(request, redactor, include_bodies),
            "response": None if response is None else _message_fields(response, redactor, include_bodies),
            "flags": flag_list, "stream_id": exchange.stream_id, "reset_code": exchange.reset_code,
            "grpc": None if grpc is None else grpc._asdict(),
            "container": None if container is None else dict(container)}   # a copy: callers may edit their record


# A keep-alive connection carries many exchanges: its fields are found once.  Keyed by id() with
# the object kept alongside, so a reused id can never return stale fields.
_CONNECTION_CACHE_LIMIT = 4096
_connection_cache: dict[int, tuple[Any, ...]] = {}   # id -> (connection, pid, comm, role, local, remote, tls, container)


def _cache_connection(connection: Connection, containers: ContainerResolver | None) -> tuple[Any, ...]:
    if len(_connection_cache) >= _CONNECTION_CACHE_LIMIT:
        _connection_cache.clear()
    cached = _connection_cache[id(connection)] = (
        connection, connection.pid, connection.comm, connection.role.value, _endpoint(connection.local),
        _endpoint(connection.remote), connection.tls, _container_field(connection, containers))
    return cached


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


def exchange_to_json(exchange: Exchange, redactor: Redactor, include_bodies: bool = True,
                     containers: ContainerResolver | None = None) -> str:
    """One JSON Lines record as text, without the newline."""
    return orjson.dumps(exchange_to_dict(exchange, redactor, include_bodies, containers)).decode()


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
        self._containers = container_resolver(options)

    def write(self, exchange: Exchange) -> None:
        if self._binary is not None:
            record = exchange_to_dict(exchange, self._redactor, self._include_bodies, self._containers)
            if not (_has_large_body(exchange) and _write_large_bodies(self._binary, record)):
                self._binary.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        else:
            self._text.write(exchange_to_json(exchange, self._redactor, self._include_bodies, self._containers) + "\n")

    def flush(self) -> None:
        if self._binary is not None:
            self._binary.flush()
        self._text.flush()

    def close(self) -> None:
        self.flush()
