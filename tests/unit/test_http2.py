"""HTTP/2 through the whole Reassembler: byte streams from real h2 endpoints (and by hand), fed whole,
one byte at a time and in random pieces, with joins, losses and damage."""
from __future__ import annotations

import base64
import random

import pytest
from hpack import Encoder
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings, strategies as st

from httptrace.exchange import Flag, Role
from httptrace.http2 import PREFACE
from httptrace.sessions import Reassembler

from .h2wire import EGRESS, INGRESS, KEY, Conversation, grpc_message, open_connection, replay

SPLITS = ["whole", "bytes", "random"]
ROLES = [Role.CLIENT, Role.SERVER]
HEADERS = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "example.test")]


def flags(exchange) -> list[str]:
    return sorted(flag.value for flag in exchange.flags)


def by_stream(exchanges):
    return {exchange.stream_id: exchange for exchange in exchanges}


# -- whole conversations ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("role", ROLES)
def test_requests_and_responses(split, role):
    c = Conversation()
    c.exchange("/a", response=b"alpha", headers=[("authorization", "Bearer s3cret"), ("cookie", "a=1")])
    c.exchange("/b?q=1", body=b"posted \x00 bytes", response=b"beta" * 5000)    # several DATA frames
    c.exchange("/a", response=b"alpha again", headers=[("authorization", "Bearer s3cret")])
    got, r = replay(c.wire, role=role, split=split)
    assert [(e.stream_id, e.request.method, e.request.target, e.response.status) for e in got] == \
        [(1, "GET", "/a", 200), (3, "POST", "/b?q=1", 200), (5, "GET", "/a", 200)]
    first, second, third = got
    assert first.request.headers == (
        (":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "example.test"),
        ("authorization", "Bearer s3cret"), ("cookie", "a=1"))
    # The third request's fields come from the dynamic table the first one filled.
    assert third.request.headers[4] == ("authorization", "Bearer s3cret")
    assert first.response.headers == ((":status", "200"), ("content-type", "text/plain"))
    assert (first.request.version, first.response.version, first.response.reason) == ("HTTP/2", "HTTP/2", "")
    assert second.request.body == b"posted \x00 bytes" and second.request.body_size == 14
    assert second.response.body == b"beta" * 5000 and second.response.body_size == 20000
    assert third.response.body == b"alpha again"
    assert all(flags(e) == [] for e in got)
    assert all(e.connection.role is role for e in got)
    assert all(e.grpc is None and e.reset_code is None for e in got)
    assert first.latency_ns > 0 and first.request.first_byte_ns <= first.response.last_byte_ns
    assert r.stats["http2_connections"] == 1 and r.stats["parse_errors"] == 0


@pytest.mark.parametrize("split", ["whole", "random"])
def test_interleaved_concurrent_streams(split):
    c = Conversation()
    ids = [c.request(f"/s{i}", end_stream=False) for i in range(4)]
    for round_ in range(3):             # the client's bodies, then the server's, frames interleaved
        for i, stream_id in enumerate(ids):
            c.client.send_data(stream_id, b"c%d-%d;" % (i, round_), end_stream=round_ == 2)
        c.flush()
    for stream_id in reversed(ids):
        c.server.send_headers(stream_id, [(":status", "201")])
    c.flush()
    for round_ in range(3):
        for i, stream_id in enumerate(ids):
            c.server.send_data(stream_id, b"s%d-%d;" % (i, round_), end_stream=round_ == 2)
        c.flush()
    got, _ = replay(c.wire, split=split)
    assert [e.stream_id for e in got] == ids        # each done when the server's last round ended it
    for i, e in enumerate(got):
        assert e.request.target == f"/s{i}"
        assert e.request.body == b"c%d-0;c%d-1;c%d-2;" % (i, i, i)
        assert e.response.body == b"s%d-0;s%d-1;s%d-2;" % (i, i, i)
        assert e.response.status == 201


@pytest.mark.parametrize("split", SPLITS)
def test_continuation_for_a_large_header_list(split):
    c = Conversation()
    big = [(f"x-h{i}", "v" * 200 + str(i)) for i in range(150)]   # ~30 KiB: HEADERS + CONTINUATIONs
    c.exchange("/big", headers=big, response_headers=[("x-back", "w" * 20000)])
    assert sum(data.count(b"\x09\x00\x00\x00\x00\x01") + data.count(b"\x09\x04\x00\x00\x00\x01")
               for _, data in c.wire) >= 2          # it really used CONTINUATION frames
    [e], _ = replay(c.wire, split=split)
    assert e.request.headers[4:] == tuple(big)
    assert e.response.header("x-back") == "w" * 20000


def test_padding_is_stripped():
    encoder = Encoder()
    headers = HeadersFrame(1, encoder.encode(HEADERS), flags=["END_HEADERS", "PADDED", "PRIORITY"])
    headers.pad_length, headers.depends_on, headers.stream_weight = 30, 0, 16
    body = DataFrame(1, b"padded body", flags=["END_STREAM", "PADDED"])
    body.pad_length = 100
    server = Encoder()
    response = HeadersFrame(1, server.encode([(":status", "200")]), flags=["END_HEADERS", "PADDED"])
    response.pad_length = 3
    response_body = DataFrame(1, b"answer", flags=["END_STREAM", "PADDED"])
    response_body.pad_length = 0
    wire = [(EGRESS, PREFACE + SettingsFrame(0).serialize() + headers.serialize() + body.serialize()),
            (INGRESS, SettingsFrame(0).serialize() + response.serialize() + response_body.serialize())]
    for split in SPLITS:
        [e], _ = replay(wire, split=split)
        assert e.request.headers == tuple(HEADERS)
        assert (e.request.body, e.response.body, e.response.status, flags(e)) == (b"padded body", b"answer", 200, [])


@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_trailers_both_ways(split):
    c = Conversation()
    stream_id = c.request("/t", "POST", body=b"part", end_stream=False)
    c.client.send_headers(stream_id, [("x-checksum", "abc")], end_stream=True)
    c.flush()
    c.respond(stream_id, 200, [("content-type", "text/plain")], b"done", trailers=[("x-served-by", "b1")])
    [e], _ = replay(c.wire, split=split)
    assert e.request.trailers == (("x-checksum", "abc"),) and e.request.body == b"part"
    assert e.response.trailers == (("x-served-by", "b1"),) and e.response.body == b"done"
    assert e.response.headers == ((":status", "200"), ("content-type", "text/plain"))


def test_informational_responses_are_skipped():
    c = Conversation()
    stream_id = c.request("/early", "GET")
    c.server.send_headers(stream_id, [(":status", "103"), ("link", "</style.css>; rel=preload")])
    c.server.send_headers(stream_id, [(":status", "100")])
    c.flush()
    c.respond(stream_id, 200, [("x-final", "1")], b"real")
    [e], r = replay(c.wire)
    assert (e.response.status, e.response.headers, e.response.body) == (200, ((":status", "200"), ("x-final", "1")), b"real")
    assert r.stats["interim_responses"] == 2


# -- how streams end -------------------------------------------------------------------------------

def test_rst_stream_ends_the_exchange_with_its_code():
    c = Conversation()
    cancelled = c.request("/slow", "POST", body=b"up", end_stream=False)
    c.server.send_headers(cancelled, [(":status", "200")])
    c.server.send_data(cancelled, b"partial")
    c.flush()
    c.client.reset_stream(cancelled, 8)           # CANCEL
    c.flush()
    refused_early = c.request("/nope")
    c.server.reset_stream(refused_early, 7)       # REFUSED_STREAM, before any response
    c.flush()
    c.exchange("/after")
    first, second, third = replay(c.wire)[0]
    assert (first.stream_id, flags(first), first.reset_code) == (cancelled, ["reset"], 8)
    assert first.request.body == b"up" and first.response.body == b"partial" and first.response.status == 200
    assert (second.stream_id, flags(second), second.reset_code, second.response) == (refused_early, ["reset"], 7, None)
    assert (third.request.target, flags(third), third.reset_code) == ("/after", [], None)


def test_goaway_refuses_streams_above_its_last_stream_id():
    c = Conversation()
    done = c.exchange("/done")
    kept = c.request("/kept")
    refused = c.request("/refused")
    c.server.close_connection(error_code=0, last_stream_id=kept)
    c.flush()
    # h2 will not send after its GOAWAY; a real server still answers `kept` (same HPACK encoder).
    c.raw(INGRESS, HeadersFrame(kept, c.server.encoder.encode([(":status", "200")]), flags=["END_HEADERS"]).serialize()
          + DataFrame(kept, b"still answered", flags=["END_STREAM"]).serialize())
    got, _ = replay(c.wire)
    streams = by_stream(got)
    assert flags(streams[done]) == []
    assert (flags(streams[refused]), streams[refused].response) == (["refused"], None)
    assert (flags(streams[kept]), streams[kept].response.body) == ([], b"still answered")


def test_close_and_idle_expiry_end_open_streams_incomplete():
    c = Conversation()
    c.exchange("/done")
    hanging = c.request("/hanging", "POST", body=b"abc", end_stream=False)
    c.server.send_headers(hanging, [(":status", "200")])
    c.flush()
    got, _ = replay(c.wire, close=False)
    assert [e.request.target for e in got] == ["/done"]
    r = Reassembler(idle_timeout_ns=10_000_000_000)
    got, r = replay(c.wire, reassembler=r, close=False)
    r.expire(10**15)
    [e] = r.drain()
    assert (e.stream_id, flags(e), e.request.body, e.response.status) == (hanging, ["incomplete"], b"abc", 200)
    assert e.request.truncated     # cut off: more may have been coming


def test_server_push_is_an_exchange_of_its_own():
    c = Conversation()
    main = c.request("/index.html")
    promised = [(":method", "GET"), (":path", "/style.css"), (":scheme", "http"), (":authority", "example.test")]
    c.server.push_stream(main, 2, promised)
    c.flush()
    c.respond(2, 200, [("content-type", "text/css")], b"body{}")
    c.respond(main, 200, [("content-type", "text/html")], b"<html>")
    for role in ROLES:
        got, r = replay(c.wire, role=role, split="random")
        streams = by_stream(got)
        pushed = streams[2]
        assert (pushed.request.method, pushed.request.target, pushed.request.headers) == ("GET", "/style.css", tuple(promised))
        assert (pushed.response.body, flags(pushed)) == (b"body{}", ["pushed"])
        assert (streams[main].response.body, flags(streams[main])) == (b"<html>", [])
        assert r.stats["pushed_streams"] == 1


# -- HPACK state ------------------------------------------------------------------------------------

def test_header_table_size_changes_are_followed():
    c = Conversation()
    c.exchange("/one", headers=[("x-shared", "s" * 50)], response_headers=[("x-back", "b" * 50)])
    # The client shrinks the server's table to 0, then to 64; the server does the same to the client's.
    c.client.update_settings({SettingsFrame.HEADER_TABLE_SIZE: 0})
    c.server.update_settings({SettingsFrame.HEADER_TABLE_SIZE: 64})
    c.flush()
    c.exchange("/two", headers=[("x-shared", "s" * 50)], response_headers=[("x-back", "b" * 50)])
    c.exchange("/three", headers=[("x-shared", "t")], response_headers=[("x-back", "u")])
    got, _ = replay(c.wire, split="random")
    assert [e.request.header("x-shared") for e in got] == ["s" * 50, "s" * 50, "t"]
    assert [e.response.header("x-back") for e in got] == ["b" * 50, "b" * 50, "u"]
    assert all(flags(e) == [] for e in got)


def many_exchanges(count: int, seed: int):
    """A long connection whose fields repeat (dynamic-table references), with the truth per stream."""
    rng = random.Random(seed)
    c = Conversation()
    truth = {}
    names = [f"x-field-{i}" for i in range(25)]
    for i in range(count):
        fields = [(rng.choice(names), rng.choice(["a", "bb", "ccc" * 10, str(rng.randint(0, 40))]))
                  for _ in range(rng.randint(0, 5))]
        path = f"/p/{rng.randint(0, 15)}"
        written_at = len(c.wire)
        stream_id = c.request(path, rng.choice(["GET", "DELETE"]), fields)
        response = [("content-type", rng.choice(["text/plain", "application/json"])),
                    (rng.choice(names), str(rng.randint(0, 9)))]
        c.respond(stream_id, rng.choice([200, 404]), response, b"body %d" % i)
        truth[stream_id] = (path, fields, response, b"body %d" % i, written_at)
    return c, truth


def assert_never_wrong(got, truth) -> int:
    """Every emitted field is the real one, in order, and left-out ones are flagged; bodies are
    exact unless flagged; returns how many exchanges were flagged hpack_incomplete."""
    flagged = 0
    for e in got:
        path, fields, response, body, _ = truth[e.stream_id]
        checks = [(e.request.headers, [(":method", e.request.method), (":path", path), (":scheme", "http"),
                                       (":authority", "example.test"), *fields])]
        if e.response is not None:
            checks.append((e.response.headers, [(":status", str(e.response.status)), *response]))
            if Flag.GAP not in e.flags:
                assert e.response.body == body
        for emitted, expected in checks:
            it = iter(expected)
            assert all(field in it for field in emitted), (emitted, expected)   # an ordered subsequence
            if len(emitted) < len(expected):   # left out: unknown to HPACK, or a whole block lost
                assert Flag.HPACK_INCOMPLETE in e.flags or (emitted is not e.request.headers and Flag.GAP in e.flags)
        assert e.request.target in (None, path)
        flagged += Flag.HPACK_INCOMPLETE in e.flags
    return flagged


@pytest.mark.parametrize("start", [9, 40, 121, 300])
@pytest.mark.parametrize("split", ["whole", "random"])
def test_joining_mid_connection_never_emits_a_wrong_field(start, split):
    c, truth = many_exchanges(200, seed=start)
    got, r = replay(c.wire, start_at=start, split=split)
    # Every stream whose request was sent after the join comes out.
    assert [e.stream_id for e in got] == sorted(stream_id for stream_id, fact in truth.items() if fact[-1] >= start)
    flagged = assert_never_wrong(got, truth)
    assert all(Flag.MID_STREAM in e.flags for e in got)
    assert flagged and r.stats["hpack_unknown_fields"] > 0


@pytest.mark.parametrize("which", ["request", "response"])
@pytest.mark.parametrize("exchange", [4, 30, 120])
def test_a_lost_event_never_leads_to_a_wrong_field(exchange, which):
    c, truth = many_exchanges(200, seed=exchange)
    stream_id = sorted(truth)[exchange]
    lost = truth[stream_id][-1] + (which == "response")    # the request's write, or the answer after it
    got, r = replay(c.wire, lose={lost}, split="random")
    assert r.stats["gaps"] == 1 and r.stats["internal_errors"] == 0
    assert_never_wrong(got, truth)
    streams = by_stream(got)
    if which == "request":
        assert stream_id not in streams and len(got) == 199     # its answer has nothing to pair with
    else:
        assert Flag.GAP in streams[stream_id].flags and len(got) == 200


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), start=st.integers(0, 80), losses=st.sets(st.integers(0, 120), max_size=3),
       split_seed=st.integers(0, 1000))
def test_property_no_wrong_field_after_joins_and_losses(seed, start, losses, split_seed):
    c, truth = many_exchanges(60, seed)
    got, _ = replay(c.wire, start_at=start, lose=losses, split="random", rng=random.Random(split_seed))
    assert_never_wrong(got, truth)


# -- detection ---------------------------------------------------------------------------------------

def test_server_settings_first_is_detected_and_tells_the_role():
    c = Conversation(connect=False)
    c.server.initiate_connection()      # a server that speaks first (Go does)
    settings_first = c.server.data_to_send()
    c.raw(INGRESS, settings_first)
    c.client.initiate_connection()
    c.flush()
    c.client.receive_data(settings_first)
    c.flush()
    c.exchange("/x")
    for role in ROLES:
        [e], _ = replay(c.wire, role=role, split="bytes")
        assert (e.request.target, e.connection.role, flags(e)) == ("/x", role, [])


def test_mid_stream_connection_learns_its_role_from_the_traffic():
    c, truth = many_exchanges(30, seed=1)
    for role in ROLES:
        got, _ = replay(c.wire, role=role, start_at=7)
        assert got and all(e.connection.role is role for e in got)


def test_http1_is_untouched_by_detection():
    wire = [(EGRESS, b"GET /h1 HTTP/1.1\r\nHost: x\r\n\r\n"), (INGRESS, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")]
    for split in SPLITS:
        for start_at in (0,):
            [e], r = replay(wire, split=split)
            assert (e.request.version, e.request.target, e.response.body, e.stream_id) == ("HTTP/1.1", "/h1", b"ok", None)
            assert r.stats["http2_connections"] == 0


def test_h2c_upgrade_switches_the_connection_to_http2():
    c = Conversation(connect=False)
    settings_header = c.client.initiate_upgrade_connection()
    c.raw(EGRESS, b"GET /up HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                  b"Upgrade: h2c\r\nHTTP2-Settings: " + settings_header + b"\r\n\r\n")
    c.server.initiate_upgrade_connection(settings_header)
    c.raw(INGRESS, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    c.flush()
    c.respond(1, 200, [("content-type", "text/plain")], b"answer to the upgrade")
    c.exchange("/next", response=b"over h2")
    # The 101 head and the server's first frames often share one write.
    merged = c.wire[:1] + [(INGRESS, c.wire[1][1] + c.wire[3][1])] + [c.wire[2]] + c.wire[4:]
    for wire in (c.wire, merged):
        for split in SPLITS:
            for role in ROLES:
                switched, upgraded, following = replay(wire, role=role, split=split)[0]
                assert (switched.request.target, switched.response.status, flags(switched)) == ("/up", 101, ["upgraded"])
                assert switched.stream_id is None
                assert (upgraded.stream_id, upgraded.request.version, upgraded.request.target) == (1, "HTTP/1.1", "/up")
                assert (upgraded.response.version, upgraded.response.body, flags(upgraded)) == \
                    ("HTTP/2", b"answer to the upgrade", [])
                assert (following.stream_id, following.request.target, following.response.body) == (3, "/next", b"over h2")


def test_upgrade_to_something_else_still_goes_opaque():
    wire = [(EGRESS, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            (INGRESS, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")]
    [e], r = replay(wire)
    assert flags(e) == ["upgraded"] and r.stats["http2_connections"] == 0 and r.stats["opaque_bytes"] == 7


# -- damage ------------------------------------------------------------------------------------------

def test_garbage_after_valid_frames():
    c = Conversation()
    c.exchange("/before")
    c.raw(EGRESS, bytes(random.Random(3).getrandbits(8) for _ in range(3000)))
    c.raw(INGRESS, b"\xff" * 100)
    got, r = replay(c.wire, split="random")
    assert [e.request.target for e in got] == ["/before"]
    assert r.stats["parse_errors"] >= 1 and r.stats["internal_errors"] == 0


def test_a_truncated_capture_inside_data_keeps_the_framing():
    c = Conversation()
    c.exchange("/big", response=b"z" * 40000)
    c.exchange("/next", response=b"fine")
    r = Reassembler(max_body=1000)
    got, r = replay(c.wire, reassembler=r)
    big, following = got
    assert big.response.body == b"z" * 1000 and big.response.body_size == 40000 and big.response.truncated
    assert flags(big) == ["truncated"]
    assert (following.request.target, following.response.body, flags(following)) == ("/next", b"fine", [])


def test_kernel_not_copied_bytes_inside_a_data_frame():
    c = Conversation()
    c.exchange("/big", response=b"q" * 3000)
    c.exchange("/next")
    r = Reassembler()
    open_connection(r)
    pos = [0, 0]
    ts = 1
    for direction, data in c.wire:
        ts += 1
        if b"q" * 3000 in data:
            at = data.index(b"q" * 3000) + 1000
            r.data(KEY, direction, pos[direction], data[:at], 1500, ts)
            r.data(KEY, direction, pos[direction] + at + 1500, data[at + 1500:], 0, ts + 1)
        else:
            r.data(KEY, direction, pos[direction], data, 0, ts)
        pos[direction] += len(data)
    r.close(KEY, ts + 5)
    big, following = r.drain()
    assert big.response.body == b"q" * 1500 and big.response.body_size == 3000 and flags(big) == ["truncated"]
    assert following.request.target == "/next" and flags(following) == []


def test_streams_per_connection_are_bounded(monkeypatch):
    from httptrace import h2streams
    monkeypatch.setattr(h2streams, "MAX_STREAMS", 5)
    c = Conversation()
    ids = [c.request(f"/open{i}", end_stream=False) for i in range(8)]
    got, r = replay(c.wire, close=False)
    assert [e.stream_id for e in got] == ids[:3] and all(flags(e) == ["incomplete"] for e in got)
    assert r.stats["evicted_requests"] == 3


def test_memory_stays_within_the_connection_cap():
    c = Conversation()
    stream_id = c.request("/up", "POST", body=b"u" * 300_000, end_stream=False)
    r = Reassembler(max_body=10_000, max_connection_buffer=64 << 10)
    got, r = replay(c.wire, reassembler=r, close=False)
    assert max(total for _, total in r.buffered_by_connection().values()) <= 64 << 10
    r.close(KEY, 10**12)
    [e] = r.drain()
    assert e.stream_id == stream_id and e.request.body == b"u" * 10_000 and e.request.body_size == 300_000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_conversations_never_raise(data):
    c = Conversation()
    for i in range(3):
        c.exchange(f"/m{i}", body=b"b" * i * 50, headers=[("x-i", str(i))])
    wire = [(direction, bytearray(chunk)) for direction, chunk in c.wire]
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(wire) - 1))
        chunk = wire[index][1]
        if chunk:
            chunk[data.draw(st.integers(0, len(chunk) - 1))] = data.draw(st.integers(0, 255))
    role = data.draw(st.sampled_from([Role.CLIENT, Role.SERVER, Role.UNKNOWN]))
    got, r = replay([(d, bytes(chunk)) for d, chunk in wire], role=role, split="random",
                    rng=random.Random(data.draw(st.integers(0, 99))), open_event=role is not Role.UNKNOWN)
    assert r.stats["internal_errors"] == 0
    assert r.stats["buffered_bytes"] == 0


# -- gRPC ----------------------------------------------------------------------------------------------

GRPC = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "1S")]


@pytest.mark.parametrize("split", SPLITS)
def test_grpc_unary_and_server_streaming(split):
    c = Conversation()
    unary = c.request("/helloworld.Greeter/SayHello", "POST", GRPC, grpc_message(b"\x0a\x05world"))
    c.respond(unary, 200, [("content-type", "application/grpc")], grpc_message(b"\x0a\x0bhello world"),
              trailers=[("grpc-status", "0"), ("grpc-message", "")])
    streaming = c.request("/pkg.v1.Feed/Watch", "POST", GRPC, grpc_message(b"q"))
    c.server.send_headers(streaming, [(":status", "200"), ("content-type", "application/grpc+proto")])
    # Three messages (one over 16 KiB) in DATA frames cut anywhere, inside length prefixes too.
    stream_bytes = grpc_message(b"1" * 10) + grpc_message(b"2" * 20000, compressed=True) + grpc_message(b"")
    cuts = [0, 17, 8000, 20022, len(stream_bytes)]
    for at, end in zip(cuts, cuts[1:]):
        c.server.send_data(streaming, stream_bytes[at:end])     # one write: frames follow each other
    c.server.send_headers(streaming, [("grpc-status", "14"), ("grpc-message", "backend%20down%3A%20%E2%9C%97")],
                          end_stream=True)
    c.flush()
    one, many = replay(c.wire, split=split)[0]
    assert one.grpc == (("helloworld.Greeter", "SayHello", 0, None, 1, 1, False))     # an empty message is none
    assert one.response.body == grpc_message(b"\x0a\x0bhello world")       # raw, prefixes included
    assert many.grpc.service == "pkg.v1.Feed" and many.grpc.method == "Watch"
    assert (many.grpc.status, many.grpc.message) == (14, "backend down: \u2717")
    assert (many.grpc.request_messages, many.grpc.response_messages, many.grpc.compressed) == (1, 3, True)
    assert many.response.body == stream_bytes and many.response.trailers[0] == ("grpc-status", "14")


def test_grpc_messages_across_many_small_frames():
    c = Conversation()
    stream_id = c.request("/pkg.Svc/Chat", "POST", GRPC, end_stream=False)
    sent = b"".join(grpc_message(bytes([i]) * i, compressed=i % 7 == 0) for i in range(1, 40))
    for at in range(0, len(sent), 13):          # one write, frames cut every 13 bytes
        c.client.send_data(stream_id, sent[at:at + 13])
    c.client.send_data(stream_id, b"", end_stream=True)
    c.flush()
    c.respond(stream_id, 200, [("content-type", "application/grpc")], trailers=[("grpc-status", "0")])
    for split in SPLITS:
        [e], _ = replay(c.wire, split=split)
        assert (e.grpc.request_messages, e.grpc.response_messages, e.grpc.compressed, e.grpc.status) == (39, 0, True, 0)
        assert e.request.body == sent


def test_grpc_trailers_only_response():
    c = Conversation()
    stream_id = c.request("/pkg.Svc/Fail", "POST", GRPC, grpc_message(b"x"))
    c.server.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc"),
                                      ("grpc-status", "5"), ("grpc-message", "not found")], end_stream=True)
    c.flush()
    [e], _ = replay(c.wire)
    assert e.grpc == ("pkg.Svc", "Fail", 5, "not found", 1, 0, False)
    assert e.response.trailers == () and e.response.body == b"" and flags(e) == []


def test_grpc_status_is_never_guessed():
    c = Conversation()
    stream_id = c.request("/pkg.Svc/Cut", "POST", GRPC, grpc_message(b"x"))
    c.respond(stream_id, 200, [("content-type", "application/grpc")], grpc_message(b"y"), end_stream=False)
    got, _ = replay(c.wire)                      # closed before any trailers
    [e] = got
    assert e.grpc.status is None and e.grpc.message is None and flags(e) == ["incomplete"]


def test_max_frame_size_from_settings_is_followed():
    c = Conversation(client_settings={SettingsFrame.MAX_FRAME_SIZE: 1 << 17})
    c.exchange("/big", response=b"L" * 60_000)
    assert any(len(data) > 50_000 for direction, data in c.wire if direction == INGRESS)   # one long DATA frame
    for split in ("whole", "random"):
        [e], r = replay(c.wire, split=split)
        assert (e.response.body, flags(e), r.stats["parse_errors"]) == (b"L" * 60_000, [], 0)


def test_max_frame_size_from_the_h2c_upgrade_header_is_followed():
    c = Conversation(connect=False)
    c.client.initiate_upgrade_connection()
    settings_header = base64.urlsafe_b64encode(SettingsFrame(0, {SettingsFrame.MAX_FRAME_SIZE: 1 << 16})
                                               .serialize_body()).rstrip(b"=")
    c.raw(EGRESS, b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                  b"HTTP2-Settings: " + settings_header + b"\r\n\r\n")
    c.server.initiate_upgrade_connection(settings_header)
    c.raw(INGRESS, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    c.flush()
    # A server that takes the header's 64 KiB frames at their word (h2 itself waits for SETTINGS).
    c.raw(INGRESS, HeadersFrame(1, c.server.encoder.encode([(":status", "200")]), flags=["END_HEADERS"]).serialize()
          + DataFrame(1, b"M" * 60_000, flags=["END_STREAM"]).serialize())
    _, upgraded = replay(c.wire)[0]
    assert (upgraded.response.body, flags(upgraded)) == (b"M" * 60_000, [])


def test_an_internal_error_restarts_the_connection_mid_stream(monkeypatch):
    from httptrace import h2streams
    c = Conversation()
    c.exchange("/one")
    c.exchange("/two", headers=[("x-literal", "new")])
    original = h2streams.Http2Session.h2_headers
    calls = []

    def explode_once(self, *args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return original(self, *args)

    monkeypatch.setattr(h2streams.Http2Session, "h2_headers", explode_once)
    got, r = replay(c.wire)
    assert r.stats["internal_errors"] == 1
    [e] = got           # the first exchange is lost with the state; the second comes out
    assert e.request.target == "/two" and Flag.MID_STREAM in e.flags
    assert e.request.header("x-literal") == "new"
