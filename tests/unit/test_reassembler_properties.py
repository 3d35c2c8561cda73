"""Properties of the whole reassembler, with hypothesis.

- Any valid conversation, cut into events at arbitrary boundaries (down to one byte per event),
  gives the same exchanges as the same conversation in one event per message, and those are the
  exchanges that were generated.
- Random bytes, and valid conversations mutated at random, never raise and never push buffered
  memory past the caps.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from httptrace.exchange import Connection, Flag, Role
from httptrace.sessions import Reassembler

# HTTPTRACE_EXAMPLES=5000 for a deeper run than the default suite's.
SETTINGS = settings(max_examples=int(os.environ.get("HTTPTRACE_EXAMPLES", "200")), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])
KEY = (1, 2, 3)

# -- generating valid conversations ----------------------------------------------------------------

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " " + "".join(chr(c) for c in range(0xA0, 0x100))

header_names = st.text(TOKEN_CHARS, min_size=1, max_size=12).map(lambda s: "X-" + s)
header_values = st.text(VALUE_CHARS, max_size=30).map(lambda s: s.strip(" "))
plain_headers = st.lists(st.tuples(header_names, header_values), max_size=4)
targets = st.text("abcdefghijklmnopqrstuvwxyz0123456789/._-?=&%", max_size=24).map(lambda s: "/" + s)
bodies = st.binary(max_size=200)


@st.composite
def header_block(draw, framing_headers):
    """Field lines (bytes) and the fields the parser should report, with an obs-fold now and then."""
    fields = draw(plain_headers)
    position = draw(st.integers(0, len(fields)))
    fields = fields[:position] + framing_headers + fields[position:]
    lines, expected = [], []
    for name, value in fields:
        if name.startswith("X-") and value and " " not in value and draw(st.integers(0, 9)) == 0:   # fold it
            cut = draw(st.integers(0, len(value)))
            first, second = value[:cut].strip(" "), value[cut:].strip(" ")
            if first and second:
                lines.append(f"{name}: {first}\r\n {second}".encode("latin-1"))
                expected.append((name, f"{first} {second}"))
                continue
        lines.append(f"{name}: {value}".encode("latin-1"))
        expected.append((name, value))
    return lines, tuple(expected)


@st.composite
def chunked_body(draw, body):
    """body in chunks (with extensions now and then) plus trailers; returns (wire bytes, trailers)."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=4))) if len(body) > 1 else []
    parts, start = [], 0
    for cut in cuts + [len(body)]:
        if cut > start:
            parts.append(body[start:cut])
        start = cut
    wire = b""
    for part in parts:
        extension = b";ext=v" if draw(st.booleans()) else b""
        wire += b"%x%s\r\n%s\r\n" % (len(part), extension, part)
    trailers = tuple(draw(st.lists(st.tuples(header_names, header_values), max_size=2)))
    wire += b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in trailers) + b"\r\n"
    return wire, trailers


@st.composite
def exchanges(draw, last: bool):
    """(request bytes, response bytes, expected summary) for one valid exchange."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
    target = draw(targets)
    body = draw(bodies) if method in ("POST", "PUT", "PATCH") else b""
    framing = draw(st.sampled_from(["length", "chunked"])) if body else draw(st.sampled_from(["none", "zero"]))
    trailers = ()
    if framing == "length":
        framing_headers, wire_body = [("Content-Length", str(len(body)))], body
    elif framing == "chunked":
        framing_headers = [("Transfer-Encoding", "chunked")]
        wire_body, trailers = draw(chunked_body(body))
    else:
        framing_headers, wire_body = ([("Content-Length", "0")] if framing == "zero" else []), b""
    lines, fields = draw(header_block(framing_headers))
    request = b"\r\n".join([f"{method} {target} HTTP/1.1".encode()] + lines) + b"\r\n\r\n" + wire_body
    expected_request = (method, target, "HTTP/1.1", fields, body, trailers)

    status = draw(st.sampled_from([200, 201, 204, 301, 304, 404, 500]))
    reason = draw(st.sampled_from(["OK", "Something", "", "Two Words"]))
    response_body = b"" if (method == "HEAD" or status in (204, 304)) else draw(bodies)
    framings = ["length", "chunked"] + (["close"] if last and method != "HEAD" and status not in (204, 304) else [])
    response_framing = draw(st.sampled_from(framings))
    response_trailers = ()
    version = "HTTP/1.1"
    if response_framing == "length":
        declared = len(response_body) if response_body or method != "HEAD" else draw(st.integers(0, 10_000))
        framing_headers, wire_body = [("Content-Length", str(declared))], response_body
        if method == "HEAD" or status in (204, 304):
            wire_body = b""
    elif response_framing == "chunked":
        framing_headers = [("Transfer-Encoding", "chunked")]
        if method == "HEAD" or status in (204, 304):
            wire_body = b""
        else:
            wire_body, response_trailers = draw(chunked_body(response_body))
    else:
        framing_headers, wire_body, version = [], response_body, "HTTP/1.0"
    lines, response_fields = draw(header_block(framing_headers))
    status_line = f"{version} {status} {reason}".rstrip(" ") if reason else f"{version} {status}"
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" if draw(st.integers(0, 5)) == 0 else b""
    response = interim + b"\r\n".join([status_line.encode()] + lines) + b"\r\n\r\n" + wire_body
    expected_response = (status, reason, version, response_fields, response_body, response_trailers)
    return request, response, (expected_request, expected_response)


@st.composite
def conversations(draw):
    count = draw(st.integers(1, 5))
    return [draw(exchanges(last=index == count - 1)) for index in range(count)]


def cut(data: bytes, draw) -> list[bytes]:
    """data in events: one byte each, or cut at random places."""
    if len(data) <= 1:
        return [data]
    if draw(st.integers(0, 3)) == 0:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=12)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def run(events, role: Role) -> tuple[list, dict]:
    """Feed (direction, bytes) events to a fresh reassembler as one connection; close; return exchanges."""
    r = Reassembler()
    r.open(KEY, Connection(1, 2, 3, "t", None, None, role))
    pos = [0, 0]
    ts = 0
    for direction, data in events:
        ts += 1
        r.data(KEY, direction, pos[direction], data, 0, ts)
        pos[direction] += len(data)
    r.close(KEY, ts + 1)
    return r.drain(), r.stats


def message_summary(message) -> tuple:
    if message is None:
        return None
    start = (message.method, message.target) if message.method else (message.status, message.reason)
    return start + (message.version, message.headers, message.body, message.body_size, message.truncated,
                    message.trailers)


def exchange_summary(exchange) -> tuple:
    return (message_summary(exchange.request), message_summary(exchange.response),
            tuple(sorted(flag.value for flag in exchange.flags)), exchange.connection.role)


roles = st.sampled_from([Role.CLIENT, Role.SERVER, Role.UNKNOWN])


def directions(role: Role) -> tuple[int, int]:
    """(direction of requests, direction of responses) for the traced process's role."""
    return (1, 0) if role is Role.SERVER else (0, 1)


@SETTINGS
@given(conversation=conversations(), role=roles, pipelined=st.booleans(), data=st.data())
def test_any_split_gives_the_same_exchanges(conversation, role, pipelined, data):
    to_server, to_client = directions(role)
    whole = []
    for request, response, _ in conversation:
        whole += [(to_server, request), (to_client, response)]
    if pipelined:
        whole = [e for e in whole if e[0] == to_server] + [e for e in whole if e[0] == to_client]
        split = [(to_server, piece) for piece in cut(b"".join(d for _, d in whole if _ == to_server), data.draw)]
        split += [(to_client, piece) for piece in cut(b"".join(d for _, d in whole if _ == to_client), data.draw)]
    else:
        split = [(direction, piece) for direction, message in whole for piece in cut(message, data.draw)]

    reference, reference_stats = run(whole, role)
    got, stats = run(split, role)
    assert [exchange_summary(e) for e in got] == [exchange_summary(e) for e in reference]

    # ... and they are the exchanges that were generated
    expected_flags = ("mid_stream",) if role is Role.UNKNOWN else ()
    assert len(reference) == len(conversation)
    for exchange, (_, _, (request, response)) in zip(reference, conversation):
        req, resp = exchange.request, exchange.response
        assert (req.method, req.target, req.version, req.headers, req.body, req.trailers) == request
        assert (resp.status, resp.reason, resp.version, resp.headers, resp.body, resp.trailers) == response
        assert tuple(sorted(f.value for f in exchange.flags)) == expected_flags
    for s in (stats, reference_stats):
        assert s["parse_errors"] == 0 and s["internal_errors"] == 0 and s["buffered_bytes"] == 0


# -- fuzzing: never raise, never exceed the caps -----------------------------------------------------

CAPS = dict(max_body=64, max_connection_buffer=300, max_total_buffer=150, max_header=200)   # small: easy to hit

# Pieces of HTTP, so that random events also build up heads, bodies, pipelines and tunnels.
SNIPPETS = [b"GET / HTTP/1.1\r\n", b"POST /u HTTP/1.1\r\n", b"HEAD / HTTP/1.1\r\n", b"CONNECT h:1 HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n", b"HTTP/1.1 101 Switching\r\n",
            b"HTTP/1.0 204 No\r\n", b"Content-Length: 400\r\n", b"Content-Length: 3\r\n",
            b"Transfer-Encoding: chunked\r\n", b"Upgrade: x\r\n", b"Host: a\r\n", b" folded\r\n", b"\r\n",
            b"\n", b"5;e=1\r\nhello\r\n", b"0\r\n", b"Trailer: t\r\n", b"x" * 100, b"\x00\xff", b"1ffff\r\n",
            # whole heads
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"POST /u HTTP/1.1\r\nContent-Length: 400\r\n\r\n",
            b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"CONNECT h:1 HTTP/1.1\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: x\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching\r\n\r\n",
            b"HTTP/1.1 204 No\r\nContent-Length: 5\r\n\r\n", b"HEAD / HTTP/1.1\r\n\r\n"]
payloads = st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(SNIPPETS), max_size=16).map(b"".join))


def check_bounds(r: Reassembler) -> None:
    stats = r.stats
    assert stats["internal_errors"] == 0
    assert stats["buffered_bytes"] <= CAPS["max_total_buffer"]
    per_connection = r.buffered_by_connection()
    assert stats["buffered_bytes"] == sum(total for _, total in per_connection.values())
    for unparsed, _ in per_connection.values():
        assert unparsed <= CAPS["max_connection_buffer"]


def check_exchanges(r: Reassembler) -> None:
    for exchange in r.drain():
        assert exchange.request is not None and exchange.flags <= set(Flag)
        for message in (exchange.request, exchange.response):
            if message is not None:
                assert len(message.body) <= CAPS["max_body"] and len(message.body) <= message.body_size


events = st.one_of(
    st.tuples(st.just("data"), st.integers(0, 2), st.integers(0, 1), payloads,
              st.sampled_from([0] * 8 + [1, 17, 600]), st.sampled_from([0] * 8 + [3, 200, 5000]),
              st.sampled_from([False] * 7 + [True])),
    st.tuples(st.just("close"), st.integers(0, 2)),
    st.tuples(st.just("expire"), st.integers(0, 10**9)),
)


def play(r, script, roles_):
    """Opens the three connections of roles_ on r (unknown roles stay unopened, but the first), then
    plays the fuzz script on it: data at its stream position (plus any gap), closes, expiry. Yields
    the time after each step."""
    pos = {}
    now = 0
    for key_index, role in enumerate(roles_):
        if role is not Role.UNKNOWN or key_index == 0:
            r.open((key_index, 0, 0), Connection(key_index, 0, 0, "", None, None, role))
    for step in script:
        now += 1000
        if step[0] == "data":
            _, key_index, direction, payload, not_copied, skip, not_visible = step
            key = (key_index, 0, 0)
            at = pos.get((key, direction), 0) + skip
            r.data(key, direction, at, b"" if not_visible else payload, not_copied, now, not_visible=not_visible)
            pos[(key, direction)] = at + (0 if not_visible else len(payload)) + not_copied
        elif step[0] == "close":
            r.close((step[1], 0, 0), now)
            pos = {k: v for k, v in pos.items() if k[0] != (step[1], 0, 0)}
        else:
            r.expire(now + step[1])
        yield now


@SETTINGS
@given(script=st.lists(events, max_size=60), roles_=st.lists(roles, min_size=3, max_size=3))
def test_random_bytes_never_raise_nor_exceed_caps(script, roles_):
    r = Reassembler(**CAPS, reorder_window=2)
    now = 0
    for now in play(r, script, roles_):
        check_bounds(r)
        check_exchanges(r)
    r.flush(now)
    check_exchanges(r)
    assert r.stats["buffered_bytes"] == 0 and r.stats["connections"] == 0 and r.stats["internal_errors"] == 0


mutations = st.lists(st.tuples(st.sampled_from(["flip", "delete", "insert", "duplicate", "crlf"]),
                               st.integers(0, 10**6), st.integers(1, 40), st.binary(min_size=1, max_size=20)),
                     max_size=6)


def mutate(data: bytes, edits) -> bytes:
    buffer = bytearray(data)
    for op, where, size, noise in edits:
        if not buffer:
            break
        at = where % len(buffer)
        if op == "flip":
            buffer[at] ^= noise[0] or 1
        elif op == "delete":
            del buffer[at:at + size]
        elif op == "insert":
            buffer[at:at] = noise
        elif op == "duplicate":
            buffer[at:at] = buffer[at:at + size]
        else:
            buffer[at:at] = b"\r\n"
    return bytes(buffer)


@SETTINGS
@given(conversation=conversations(), role=roles, edits=mutations, data=st.data(),
       losses=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 300)), max_size=3))
def test_mutated_conversations_never_raise_nor_exceed_caps(conversation, role, edits, data, losses):
    to_server, to_client = directions(role)
    r = Reassembler(**CAPS, reorder_window=1)
    r.open(KEY, Connection(1, 2, 3, "t", None, None, role))
    pos = [0, 0]
    ts = 0
    lost_at = {where for where, _ in losses}
    for request, response, _ in conversation:
        for direction, message in ((to_server, request), (to_client, response)):
            for index, piece in enumerate(cut(mutate(message, edits), data.draw)):
                ts += 1
                skip = next((size for where, size in losses if where % 7 == index), 0) if lost_at else 0
                pos[direction] += skip
                r.data(KEY, direction, pos[direction], piece, 0, ts)
                pos[direction] += len(piece)
                check_bounds(r)
    r.close(KEY, ts + 1)
    check_bounds(r)
    check_exchanges(r)
    assert r.stats["buffered_bytes"] == 0 and r.stats["connections"] == 0
