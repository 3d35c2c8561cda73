"""The HTTP/1 reader's fast path for whole messages (MessageReader._read_whole) against the state
machine alone (MessageReader.whole_messages = False), with hypothesis.

The same events go to a reassembler with the fast path and to one without; every field of every
exchange (connection, start lines, headers in wire order and case, bodies, sizes, truncation,
timestamps, trailers, flags) and every counter must be the same.  The events are valid
conversations fed one event per message, several messages per event (pipelining), or cut at random
places (heads split across events, where the fast path must step aside); and random or mutated bytes,
where the fast path meets broken heads, interim responses, upgrades, CONNECT and HEAD.
"""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from httptrace.exchange import Connection, Role
from httptrace.protocols import http1
from httptrace.protocols.http1 import EITHER, REQUEST, RESPONSE, MalformedHead, MessageReader, parse_head
from httptrace.sessions import Reassembler

from .test_reassembler_properties import (CAPS, SETTINGS, conversations, cut, directions, events, mutate, mutations,
                                          play, roles)

KEY = (1, 2, 3)


def run(script, role: Role, whole_messages: bool, caps: dict | None = None) -> tuple[list, dict]:
    """Feed (direction, bytes, ts) events to a fresh reassembler; close; return (exchanges, stats)."""
    MessageReader.whole_messages = whole_messages
    try:
        r = Reassembler(**(caps or {}))
        r.open(KEY, Connection(1, 2, 3, "t", None, None, role))
        pos = [0, 0]
        ts = 0
        for direction, data, ts in script:
            r.data(KEY, direction, pos[direction], data, 0, ts)
            pos[direction] += len(data)
        r.close(KEY, ts + 1)
        return r.drain(), r.stats
    finally:
        MessageReader.whole_messages = True


def check_same(script, role: Role, caps: dict | None = None) -> list:
    fast, fast_stats = run(script, role, True, caps)
    slow, slow_stats = run(script, role, False, caps)
    assert fast == slow     # named tuples: every field, nested ones included
    assert fast_stats == slow_stats
    return fast


def timed(pieces) -> list:
    return [(direction, data, ts) for ts, (direction, data) in enumerate(pieces, start=1)]


@SETTINGS
@given(conversation=conversations(), role=roles, layout=st.sampled_from(["message", "pipelined", "cut"]),
       data=st.data())
def test_fast_path_gives_the_state_machines_exchanges(conversation, role, layout, data):
    to_server, to_client = directions(role)
    messages = []
    for request, response, _ in conversation:
        messages += [(to_server, request), (to_client, response)]
    if layout == "message":
        script = timed(messages)
    elif layout == "pipelined":     # all requests in one event, then all responses in one
        script = timed([(to_server, b"".join(d for direction, d in messages if direction == to_server)),
                        (to_client, b"".join(d for direction, d in messages if direction == to_client))])
    else:
        script = timed((direction, piece) for direction, message in messages for piece in cut(message, data.draw))
    got = check_same(script, role)
    assert len(got) == len(conversation)


@SETTINGS
@given(conversation=conversations(), role=roles, data=st.data())
def test_whole_messages_and_split_ones_give_the_same_exchanges(conversation, role, data):
    """Each message in one event (the fast path's case) or cut into pieces that keep its event's
    timestamp (the state machine's): the same exchanges, timestamps included."""
    to_server, to_client = directions(role)
    whole, split = [], []
    for ts, (direction, message) in enumerate(
            (m for request, response, _ in conversation for m in ((to_server, request), (to_client, response))),
            start=1):
        whole.append((direction, message, ts))
        split += [(direction, piece, ts) for piece in cut(message, data.draw)]
    assert run(whole, role, True)[0] == run(split, role, False)[0]


def run_events(script, roles_, whole_messages: bool) -> tuple[list, dict]:
    """The fuzz script of test_reassembler_properties (three connections; data with gaps, cut
    payloads and sendfile, closes, expiry), with the small caps; (exchanges, stats)."""
    MessageReader.whole_messages = whole_messages
    try:
        r = Reassembler(**CAPS, reorder_window=2)
        now = 0
        out = []
        for now in play(r, script, roles_):
            out += r.drain()
        r.flush(now)
        return out + r.drain(), r.stats
    finally:
        MessageReader.whole_messages = True


@SETTINGS
@given(script=st.lists(events, max_size=60), roles_=st.lists(roles, min_size=3, max_size=3))
def test_random_events_give_the_same_exchanges(script, roles_):
    assert run_events(script, roles_, True) == run_events(script, roles_, False)


@SETTINGS
@given(conversation=conversations(), role=roles, edits=mutations)
def test_mutated_conversations_give_the_same_exchanges(conversation, role, edits):
    to_server, to_client = directions(role)
    messages = []
    for request, response, _ in conversation:
        messages += [(to_server, request), (to_client, response)]
    script = timed((direction, mutate(message, edits)) for direction, message in messages)
    check_same(script, role)
    check_same(script, role, CAPS)


# -- parse_head's cache of lines seen before ---------------------------------------------------------

HEAD_LINES = ["GET / HTTP/1.1", "GET /a?token=x HTTP/1.1", "HTTP/1.1 200 OK", "HTTP/1.0 404 Not Found", "HTTP/1.1 200 ",
              "HTTP/1.1 101 Up", "Host: a", "Content-Length: 5", "content-length:  7", "Content-Length: 5, 5", "Content-Length: 05",
              "Content-Length: x", "Transfer-Encoding: gzip, Chunked", "Upgrade: h2c", "Cookie: a=1", "X-A: b\tc",
              "X-A: b ", " folded", "\tfolded", "X-Empty:", "Bad line", ": no name", "X-B: v\rw", "X-C: v\nw", ""]
heads = st.lists(st.sampled_from(HEAD_LINES), min_size=1, max_size=6).map("\r\n".join)


def parsed(text: str, kind: int) -> tuple:
    try:
        b = parse_head(text, kind)
    except MalformedHead as error:
        return ("MalformedHead", error.start_line_ok)
    return (b.is_request, b.method, b.target, b.version, b.status, b.reason, b.headers, b.content_length,
            b.transfer_encoding, b.chunked, b.upgrade)


@SETTINGS
@given(texts=st.lists(heads, min_size=1, max_size=8), kind=st.sampled_from([REQUEST, RESPONSE, EITHER]))
def test_parse_head_remembers_lines_without_changing_results(texts, kind):
    """Each head parsed with the line cache as earlier heads left it, and again with it empty."""
    for text in texts:
        remembered = parsed(text, kind)
        for cache in (http1._START_OF_LINE, http1._FIELD_OF_LINE, http1._FRAMING_OF_LINE):
            cache.clear()
        assert parsed(text, kind) == remembered
        assert parsed(text, kind) == remembered     # now from what the first of these left


def test_credentials_are_not_remembered():
    parse_head("GET /a?token=secret HTTP/1.1\r\nAuthorization: Bearer secret\r\nCookie: s=secret\r\nHost: a", REQUEST)
    remembered = repr((http1._START_OF_LINE, http1._FIELD_OF_LINE, http1._FRAMING_OF_LINE))
    assert "Host: a" in remembered and "secret" not in remembered


def test_long_lines_are_not_remembered():
    long_value = "v" * 5000
    parse_head(f"GET /{long_value} HTTP/1.1\r\nX-Long: {long_value}\r\nHost: a", REQUEST)
    remembered = repr((http1._START_OF_LINE, http1._FIELD_OF_LINE))
    assert "Host: a" in remembered and long_value not in remembered
