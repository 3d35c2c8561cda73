"""sessions.Reassembler as the loader drives it: pairing, roles, damage, expiry, memory bounds."""
from __future__ import annotations

import pytest

from httptrace import http1
from httptrace.exchange import Connection, Endpoint, Flag, Role
from httptrace.sessions import Reassembler, decoded_body

from .corpus.messages import CASES, summary

KEY = (100, 7, 123456)
EGRESS, INGRESS = 0, 1


class Wire:
    """One traced connection: keeps each direction's `pos` and a clock, like the kernel would."""

    def __init__(self, reassembler: Reassembler, role: Role = Role.CLIENT, key=KEY, *, open_event=True):
        self.r = reassembler
        self.key = key
        self.role = role
        self.pos = [0, 0]
        self.ts = 1_000
        if open_event:
            reassembler.open(key, Connection(pid=key[0], fd=key[1], tsid=key[2], comm="app",
                                             local=Endpoint("127.0.0.1", 8080), remote=Endpoint("127.0.0.1", 5555),
                                             role=role))

    def tick(self) -> int:
        self.ts += 1_000
        return self.ts

    def send(self, direction: int, data: bytes, *, not_copied=0, lost_before=0, not_visible=False):
        self.pos[direction] += lost_before
        self.r.data(self.key, direction, self.pos[direction], data, not_copied, self.tick(), not_visible=not_visible)
        self.pos[direction] += len(data) + not_copied

    # the traced process is the client unless role is SERVER
    def request(self, data: bytes, **kw):
        self.send(INGRESS if self.role is Role.SERVER else EGRESS, data, **kw)

    def response(self, data: bytes, **kw):
        self.send(EGRESS if self.role is Role.SERVER else INGRESS, data, **kw)

    def close(self):
        self.r.close(self.key, self.tick())


def chunks(data: bytes, split: str) -> list[bytes]:
    if split == "whole":
        return [data]
    size = 1 if split == "bytes" else 7
    return [data[i:i + size] for i in range(0, len(data), size)]


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- the corpus, every role, whole and split -------------------------------------------------------

@pytest.mark.parametrize("split", ["whole", "sevens", "bytes"])
@pytest.mark.parametrize("role", [Role.CLIENT, Role.SERVER, Role.UNKNOWN])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus(case, role, split):
    r = Reassembler()
    wire = Wire(r, role)
    for piece in chunks(case.client, split):
        wire.request(piece)
    for piece in chunks(case.server, split):
        wire.response(piece)
    got = r.drain()
    if case.close:
        wire.close()
        got += r.drain()
    expected = list(case.expected)
    if role is Role.UNKNOWN:   # no accept()/connect() seen: the connection predates the tracer
        expected = [e[:5] + (tuple(sorted(e[5] + ("mid_stream",))),) for e in expected]
    assert [summary(e) for e in got] == expected
    decided = Role.SERVER if role is Role.SERVER else Role.CLIENT
    assert all(e.connection.role is decided for e in got)
    if not case.close:
        wire.close()
        assert r.drain() == []
    stats = r.stats
    assert stats["internal_errors"] == 0 and stats["connections"] == 0 and stats["buffered_bytes"] == 0


def test_corpus_headers_and_trailers_survive():
    by_name = {case.name: case for case in CASES}
    r = Reassembler()
    wire = Wire(r)
    wire.request(by_name["chunked-extensions-trailers"].client)
    wire.response(by_name["chunked-extensions-trailers"].server)
    wire.request(by_name["obs-fold"].client)
    wire.response(by_name["obs-fold"].server)
    chunked, folded = r.drain()
    assert chunked.response.trailers == (("X-Checksum", "abc"), ("X-Other", "1"))
    assert chunked.response.body_size == 21
    assert folded.request.header("x-long") == "first second third"
    assert folded.response.header("X-Folded") == "one two"


# -- roles, connection, timestamps --------------------------------------------------------------------

def test_exchange_fields_and_timestamps():
    r = Reassembler()
    wire = Wire(r, Role.SERVER)
    r.data(KEY, INGRESS, 0, b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 0, 5_000)
    r.data(KEY, INGRESS, 41, b"cd", 0, 6_000)
    r.data(KEY, EGRESS, 0, b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\n", 0, 7_000)
    r.data(KEY, EGRESS, 43, b"xyz", 0, 9_000)
    [exchange] = r.drain()
    req, resp = exchange.request, exchange.response
    assert (req.method, req.target, req.body, req.first_byte_ns, req.last_byte_ns) == ("POST", "/p", b"abcd", 5_000, 6_000)
    assert (resp.status, resp.body, resp.first_byte_ns, resp.last_byte_ns) == (201, b"xyz", 7_000, 9_000)
    assert exchange.latency_ns == 4_000 and exchange.flags == frozenset()
    assert exchange.connection.role is Role.SERVER and exchange.connection.comm == "app"
    assert exchange.connection.local == Endpoint("127.0.0.1", 8080)


@pytest.mark.parametrize("request_direction, role", [(EGRESS, Role.CLIENT), (INGRESS, Role.SERVER)])
def test_role_is_decided_by_who_sends_the_requests(request_direction, role):
    r = Reassembler()
    Wire(r, Role.UNKNOWN)
    r.data(KEY, 1 - request_direction, 0, OK, 0, 2)      # a response first: an orphan, but decides too
    r.data(KEY, request_direction, 0, GET, 0, 3)
    r.data(KEY, 1 - request_direction, len(OK), OK, 0, 4)
    [exchange] = r.drain()
    assert exchange.connection.role is role and Flag.MID_STREAM in exchange.flags
    assert r.stats["orphan_responses"] == 1


def test_data_for_a_connection_never_opened():
    r = Reassembler()
    key = (5, 6, 7)
    r.data(key, EGRESS, 5_000, b"of a body from before\r\n" + GET, 0, 10)
    r.data(key, INGRESS, 9_000, b"tail\r\n" + OK, 0, 20)
    [exchange] = r.drain()
    conn = exchange.connection
    assert (conn.pid, conn.fd, conn.tsid, conn.comm, conn.local, conn.remote) == (5, 6, 7, "", None, None)
    assert conn.role is Role.CLIENT
    assert exchange.flags == frozenset({Flag.MID_STREAM})
    assert r.stats["parse_errors"] == 0 and r.stats["skipped_bytes"] > 0


def test_open_arriving_after_data_keeps_the_state():
    r = Reassembler()
    r.data(KEY, EGRESS, 0, GET, 0, 10)
    Wire(r, Role.CLIENT)
    r.data(KEY, INGRESS, 0, OK, 0, 20)
    [exchange] = r.drain()
    assert exchange.connection.comm == "app" and exchange.response.body == b"ok"


def test_response_with_no_request_is_dropped_and_counted():
    r = Reassembler()
    wire = Wire(r)
    wire.response(OK)
    wire.request(GET)
    wire.response(OK)
    [exchange] = r.drain()
    assert exchange.request.target == "/a" and r.stats["orphan_responses"] == 1


def test_a_response_cannot_answer_a_request_sent_after_it():
    r = Reassembler()
    Wire(r)
    r.data(KEY, EGRESS, 0, GET, 0, 50)
    r.data(KEY, INGRESS, 0, OK, 0, 40)      # stamped before the request: not its answer
    r.data(KEY, INGRESS, len(OK), OK, 0, 60)
    [exchange] = r.drain()
    assert exchange.response.first_byte_ns == 60 and r.stats["orphan_responses"] == 1


def test_drain_returns_completion_order_and_empties():
    r = Reassembler()
    a = Wire(r, key=(1, 1, 1))
    b = Wire(r, key=(2, 2, 2))
    a.request(GET)
    b.request(GET)
    b.response(OK)
    a.response(OK)
    assert [e.connection.pid for e in r.drain()] == [2, 1]
    assert r.drain() == []


def test_early_response_waits_for_the_request_to_finish():
    r = Reassembler()
    wire = Wire(r)
    wire.request(b"PUT /big HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234")
    wire.response(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert r.drain() == []
    wire.request(b"56789")
    [exchange] = r.drain()
    assert (exchange.request.body, exchange.response.status) == (b"0123456789", 413)


# -- close, expiry, flush ---------------------------------------------------------------------------

def test_close_completes_a_close_delimited_response():
    r = Reassembler()
    wire = Wire(r)
    wire.request(b"GET / HTTP/1.0\r\n\r\n")
    wire.response(b"HTTP/1.0 200 OK\r\n\r\npart one, ")
    wire.response(b"part two")
    assert r.drain() == []
    wire.close()
    [exchange] = r.drain()
    assert exchange.response.body == b"part one, part two" and exchange.flags == frozenset()


def test_close_emits_pending_requests_as_incomplete():
    r = Reassembler()
    wire = Wire(r)
    wire.request(GET + b"GET /b HTTP/1.1\r\n\r\n" + b"POST /c HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc")
    wire.response(OK)
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    wire.close()
    first, second, third = r.drain()
    assert first.flags == frozenset()
    assert second.flags == frozenset({Flag.INCOMPLETE}) and second.response.body == b"partial"
    assert second.response.truncated
    assert third.flags == frozenset({Flag.INCOMPLETE}) and third.response is None
    assert third.request.body == b"abc" and third.request.truncated
    assert r.stats["incomplete"] == 2 and r.stats["connections"] == 0


def test_close_of_an_unknown_key_is_ignored():
    r = Reassembler()
    r.close((9, 9, 9), 1)
    assert r.drain() == [] and r.stats["connections"] == 0


def test_expire_closes_idle_connections_only():
    r = Reassembler(idle_timeout_ns=1_000_000)
    idle = Wire(r, key=(1, 1, 1))
    busy = Wire(r, key=(2, 2, 2))
    idle.request(GET)          # ts 2_000
    busy.request(GET)
    r.expire(2_000 + 999_000)
    assert r.drain() == [] and r.stats["connections"] == 2
    busy.ts = 2_000_000
    busy.response(OK)          # busy is active at ts 2_001_000
    r.expire(2_500_000)
    [expired, done] = sorted(r.drain(), key=lambda e: e.connection.pid)
    assert expired.flags == frozenset({Flag.INCOMPLETE}) and expired.response is None
    assert done.connection.pid == 2 and done.flags == frozenset()
    assert r.stats["connections"] == 1


def test_expire_does_not_complete_close_delimited_responses():
    r = Reassembler(idle_timeout_ns=1_000)
    wire = Wire(r)
    wire.request(b"GET / HTTP/1.0\r\n\r\n")
    wire.response(b"HTTP/1.0 200 OK\r\n\r\nmaybe more")
    r.expire(10**9)
    [exchange] = r.drain()
    assert Flag.INCOMPLETE in exchange.flags and exchange.response.body == b"maybe more"


def test_opened_but_silent_connections_expire_too():
    r = Reassembler(idle_timeout_ns=1_000)
    Wire(r)
    r.expire(10_000)
    assert r.stats["connections"] == 1      # idle from the first sweep that saw it
    r.expire(10_000 + 5_000)
    assert r.stats["connections"] == 0


def test_flush_emits_everything_pending():
    r = Reassembler()
    a = Wire(r, key=(1, 1, 1))
    b = Wire(r, key=(2, 2, 2))
    a.request(GET)
    b.request(b"GET / HTTP/1.1\r\n\r\n")
    b.response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
    r.flush(10**12)
    exchanges = r.drain()
    assert len(exchanges) == 2 and all(Flag.INCOMPLETE in e.flags for e in exchanges)
    assert r.stats["connections"] == 0 and r.stats["buffered_bytes"] == 0


# -- damage: gaps, truncation, sendfile, parse errors -------------------------------------------------

def test_gap_inside_a_request_body_keeps_the_exchange():
    r = Reassembler(reorder_window=0)
    wire = Wire(r)
    wire.request(b"POST /u HTTP/1.1\r\nContent-Length: 10\r\n\r\n01")
    wire.request(b"789", lost_before=5)
    wire.response(OK)
    [exchange] = r.drain()
    assert exchange.flags == frozenset({Flag.GAP})
    assert (exchange.request.body, exchange.request.body_size, exchange.request.truncated) == (b"01789", 10, True)
    assert r.stats["gaps"] == 1


def test_gap_inside_a_request_head_loses_it_but_keeps_pairing():
    r = Reassembler(reorder_window=0)
    wire = Wire(r)
    wire.request(GET)
    wire.request(b"GET /lost HTTP/1.1\r\nHo")
    wire.request(b"st: x\r\n\r\nGET /c HTTP/1.1\r\n\r\n", lost_before=20)
    wire.response(OK)
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlost")
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc")
    exchanges = r.drain()
    assert [(e.request.target, e.response.body) for e in exchanges] == [("/a", b"ok"), ("/c", b"c")]
    # Skipped bytes were the lost request's rest, not malformed.  (GAP: on a pipelined connection, that
    # the gap hid exactly one request is a guess, and /c's pairing rests on it.)
    assert exchanges[0].flags == frozenset() and exchanges[1].flags == frozenset({Flag.GAP})
    stats = r.stats
    assert (stats["lost_requests"], stats["orphan_responses"], stats["gaps"]) == (1, 1, 1)


def test_gap_inside_a_response_head_ends_its_request_incomplete():
    r = Reassembler(reorder_window=0)
    wire = Wire(r)
    wire.request(GET + b"GET /b HTTP/1.1\r\n\r\n")
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Le")
    wire.response(b"\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nb", lost_before=30)
    [first] = r.drain()
    assert first.request.target == "/a" and first.response is None
    assert first.flags == frozenset({Flag.GAP, Flag.INCOMPLETE})
    # The 201 follows lost bytes: it could also answer a request lost after /b.  The next request
    # event, with nothing lost before it, says it does not.
    wire.request(b"GET /c HTTP/1.1\r\n\r\n")
    [second] = r.drain()
    assert (second.request.target, second.response.status) == ("/b", 201)
    assert second.flags == frozenset()


def test_gap_in_chunk_framing_breaks_the_response_but_keeps_the_exchange():
    r = Reassembler(reorder_window=0)
    wire = Wire(r)
    wire.request(GET + b"GET /b HTTP/1.1\r\n\r\n")
    wire.response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    wire.response(b"\r\n0\r\n\r\n" + OK, lost_before=50)
    first, second = r.drain()
    assert first.flags == frozenset({Flag.GAP}) and first.response.body == b"abc" and first.response.truncated
    assert second.request.target == "/b" and second.response.body == b"ok"


def test_kernel_truncation_of_a_body():
    r = Reassembler()
    wire = Wire(r)
    wire.request(GET)
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000, not_copied=99_000)
    wire.request(GET)
    wire.response(OK)
    first, second = r.drain()
    assert first.flags == frozenset({Flag.TRUNCATED})
    assert (len(first.response.body), first.response.body_size, first.response.truncated) == (1000, 100_000, True)
    assert second.flags == frozenset() and r.stats["truncated"] == 1


def test_sendfile_body_is_not_visible_not_truncated():
    r = Reassembler()
    wire = Wire(r, Role.SERVER)
    wire.request(GET)
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n")
    wire.response(b"", not_copied=65536, not_visible=True)
    wire.request(GET)
    wire.response(OK)
    first, second = r.drain()
    assert first.flags == frozenset({Flag.NOT_VISIBLE})
    assert (first.response.body, first.response.body_size) == (b"", 65536)
    assert second.response.body == b"ok" and r.stats["parse_errors"] == 0


def test_truncation_inside_headers_is_treated_like_a_gap():
    r = Reassembler()
    wire = Wire(r)
    wire.request(GET)
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Len", not_copied=40)
    wire.request(GET)
    wire.response(OK)
    first, second = r.drain()
    assert first.response is None and Flag.GAP in first.flags and Flag.INCOMPLETE in first.flags
    assert second.response.body == b"ok"


def test_max_body_keeps_the_start_and_counts_the_rest():
    r = Reassembler(max_body=10)
    wire = Wire(r)
    wire.request(b"POST / HTTP/1.1\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz")
    wire.response(OK)
    [exchange] = r.drain()
    assert (exchange.request.body, exchange.request.body_size, exchange.request.truncated) == (b"abcdefghij", 26, True)
    assert exchange.flags == frozenset({Flag.TRUNCATED})


def test_upgrade_makes_the_connection_opaque():
    r = Reassembler()
    wire = Wire(r)
    wire.request(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    wire.response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    wire.request(GET)        # websocket frames that happen to look like HTTP
    wire.response(OK)
    [exchange] = r.drain()
    assert exchange.flags == frozenset({Flag.UPGRADED}) and exchange.response.status == 101
    wire.close()
    assert r.drain() == [] and r.stats["upgrades"] == 1 and r.stats["opaque_bytes"] == len(GET) + len(OK)


# -- ordering of events ---------------------------------------------------------------------------

def test_out_of_order_events_are_reordered_without_a_gap():
    r = Reassembler(reorder_window=4)     # opt-in: the kernel reports each direction in order
    Wire(r)
    data = b"POST /x HTTP/1.1\r\nContent-Length: 6\r\n\r\nabcdef"
    r.data(KEY, EGRESS, 20, data[20:], 0, 12)
    r.data(KEY, EGRESS, 0, data[:20], 0, 11)
    r.data(KEY, INGRESS, 0, OK, 0, 13)
    [exchange] = r.drain()
    assert exchange.request.body == b"abcdef" and exchange.flags == frozenset()
    assert (r.stats["gaps"], r.stats["reordered"]) == (0, 1)


def test_a_hole_becomes_a_gap_once_enough_events_pile_up():
    r = Reassembler(reorder_window=2)
    wire = Wire(r)
    wire.request(b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    wire.request(b"b" * 10, lost_before=10)
    wire.request(b"c" * 10)
    assert r.stats["gaps"] == 0
    wire.request(b"d" * 70)      # third held segment: past the window
    wire.response(OK)
    [exchange] = r.drain()
    assert exchange.flags == frozenset({Flag.GAP}) and exchange.request.body_size == 100
    assert r.stats["gaps"] == 1


def test_a_hole_becomes_a_gap_after_the_reorder_timeout():
    r = Reassembler(reorder_timeout_ns=1_000_000)
    wire = Wire(r)
    wire.request(b"POST /x HTTP/1.1\r\nContent-Length: 20\r\n\r\n")
    wire.request(b"b" * 10, lost_before=10)
    wire.response(OK)
    r.expire(wire.ts + 10_000_000)
    [exchange] = r.drain()
    assert exchange.flags == frozenset({Flag.GAP}) and r.stats["connections"] == 1


def test_duplicate_and_overlapping_events_are_trimmed():
    r = Reassembler()
    Wire(r)
    r.data(KEY, EGRESS, 0, GET[:10], 0, 1)
    r.data(KEY, EGRESS, 0, GET[:10], 0, 2)         # duplicate
    r.data(KEY, EGRESS, 5, GET[5:20], 0, 3)        # overlaps
    r.data(KEY, EGRESS, 20, GET[20:], 0, 4)
    r.data(KEY, INGRESS, 0, OK, 0, 5)
    [exchange] = r.drain()
    assert exchange.request.headers == (("Host", "x"),) and exchange.flags == frozenset()


# -- memory bounds and robustness ------------------------------------------------------------------

def test_global_cap_cuts_the_oldest_partial_bodies_first():
    r = Reassembler(max_total_buffer=100_000, max_body=80_000)
    old = Wire(r, key=(1, 1, 1))
    new = Wire(r, key=(2, 2, 2))
    old.request(b"POST /old HTTP/1.1\r\nContent-Length: 200000\r\n\r\n" + b"o" * 60_000)
    new.request(b"POST /new HTTP/1.1\r\nContent-Length: 50000\r\n\r\n" + b"n" * 45_000)
    assert r.stats["buffered_bytes"] <= 100_000 and r.stats["bodies_cut"] == 1
    new.request(b"n" * 5_000)
    new.response(OK)
    old.request(b"o" * 140_000)
    old.response(OK)
    by_target = {e.request.target: e for e in r.drain()}
    assert Flag.TRUNCATED in by_target["/old"].flags and by_target["/old"].request.body == b""
    assert by_target["/old"].request.body_size == 200_000
    assert by_target["/new"].flags == frozenset() and len(by_target["/new"].request.body) == 50_000
    assert r.stats["buffered_bytes"] == 0


def test_per_connection_cap_on_unparsed_bytes():
    r = Reassembler(max_connection_buffer=4096)
    wire = Wire(r)
    wire.request(b"CONNECT h:443 HTTP/1.1\r\n\r\n")     # waits for the answer before parsing more
    for _ in range(10):
        wire.request(b"\x17\x03\x03" * 500)
        unparsed, _ = r.buffered_by_connection()[KEY]
        assert unparsed <= 4096
    assert r.stats["buffer_overflows"] >= 1


def test_held_segments_are_bounded_per_connection():
    r = Reassembler(max_connection_buffer=10_000, reorder_window=1000, reorder_timeout_ns=10**15)
    wire = Wire(r)
    wire.request(b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
    for _ in range(50):
        wire.request(b"z" * 1000, lost_before=1)
        assert r.buffered_by_connection()[KEY][0] <= 10_000
    assert r.stats["gaps"] >= 1


def test_internal_errors_are_counted_not_raised(monkeypatch):
    r = Reassembler()
    wire = Wire(r)

    def explode(self, data, ts_ns):
        raise RuntimeError("boom")

    monkeypatch.setattr(http1.MessageReader, "receive_data", explode)
    wire.request(GET)
    monkeypatch.undo()
    assert r.stats["internal_errors"] == 1
    wire.request(GET)
    wire.response(OK)
    [exchange] = r.drain()
    assert exchange.request.target == "/a" and Flag.MID_STREAM in exchange.flags


def test_bad_arguments_do_not_raise():
    r = Reassembler()
    r.data(KEY, 7, 0, b"x", 0, 1)      # no such direction
    r.data(KEY, EGRESS, 0, None, 0, 1)
    r.close(["unhashable"], 2)
    assert r.stats["internal_errors"] == 3


def test_stats_keys():
    stats = Reassembler().stats
    for key in ("exchanges", "incomplete", "gaps", "truncated", "parse_errors", "connections", "buffered_bytes",
                "orphan_responses"):
        assert stats[key] == 0


def test_decoded_body_is_available_from_sessions():
    import gzip
    r = Reassembler()
    wire = Wire(r)
    body = gzip.compress(b"hello gzip")
    wire.request(GET)
    wire.response(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    [exchange] = r.drain()
    assert decoded_body(exchange.response) == b"hello gzip" and exchange.response.body == body


def test_orphan_101_makes_the_whole_connection_opaque():
    r = Reassembler()
    key = (8, 8, 8)
    r.data(key, INGRESS, 0, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi", 0, 1)
    r.data(key, EGRESS, 0, b"\x81\x82abcd" + GET, 0, 2)
    r.close(key, 3)
    assert r.drain() == [] and r.stats["orphan_responses"] == 1 and r.stats["skipped_bytes"] == 0


def test_too_many_pending_requests_are_evicted_as_incomplete(monkeypatch):
    from httptrace import h1pairing
    monkeypatch.setattr(h1pairing, "MAX_PENDING_REQUESTS", 3)
    r = Reassembler()
    wire = Wire(r)
    wire.request(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % n for n in range(5)))
    evicted = r.drain()
    assert [e.request.target for e in evicted] == ["/0", "/1"]
    assert all(e.flags == frozenset({Flag.INCOMPLETE}) for e in evicted) and r.stats["evicted_requests"] == 2
