"""http1.MessageReader on its own: framing, tolerance, damage control; every feed also one byte at a time."""
from __future__ import annotations

import gzip
import zlib

import pytest

from httptrace.exchange import Message
from httptrace.protocols.http1 import (EITHER, F_GAP, F_NOT_VISIBLE, F_PARSE_ERROR, F_TRUNCATED, F_UPGRADED, LOST,
                             NOT_VISIBLE, OPAQUE, REQUEST, RESPONSE, SYNC, TRUNCATED, MalformedHead,
                             MessageReader, decoded_body, parse_chunk_size, parse_head)

SPLITS = ("whole", "bytes", "pairs", "thirds")


def pieces(data: bytes, split: str) -> list[bytes]:
    if split == "whole":
        return [data]
    if split == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    if split == "pairs":
        return [data[i:i + 2] for i in range(0, len(data), 2)]
    third = max(1, len(data) // 3)
    return [data[:third], data[third:2 * third], data[2 * third:]]


class Recorder:
    """A sink that records what the reader reports; answers responses with `methods` in order."""

    def __init__(self, methods=()):
        self.methods = list(methods)
        self.started = []
        self.finished = []
        self.lost = []
        self.kinds = []
        self.next_state = {}    # method -> state to return from message_finished

    def kind_decided(self, reader):
        self.kinds.append(reader.kind)

    def message_started(self, reader, b):
        self.started.append(b)
        if b.is_request:
            return None
        return self.methods.pop(0) if self.methods else "GET"

    def message_finished(self, reader, b):
        self.finished.append(b)
        return self.next_state.get(b.method)

    def message_lost(self, reader, bits):
        self.lost.append(bits)

    def messages(self) -> list[Message]:
        return [b.build() for b in self.finished]


def read(kind, data: bytes, split: str = "whole", *, eof=False, methods=(), **options):
    recorder = Recorder(methods)
    reader = MessageReader(kind, recorder, stats={}, **options)
    for ts, piece in enumerate(pieces(data, split), start=1):
        reader.receive_data(piece, ts)
    if eof:
        reader.receive_eof(10_000)
    return recorder, reader


# -- start lines and headers ------------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_request_without_body(split):
    rec, reader = read(REQUEST, b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n", split)
    [msg] = rec.messages()
    assert (msg.method, msg.target, msg.version) == ("GET", "/a?b=c", "HTTP/1.1")
    assert msg.headers == (("Host", "example.com"),)
    assert msg.body == b"" and msg.body_size == 0 and not msg.truncated
    assert reader.buffered() == 0


@pytest.mark.parametrize("split", SPLITS)
def test_response_with_content_length(split):
    rec, _ = read(RESPONSE, b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here!", split)
    [msg] = rec.messages()
    assert (msg.status, msg.reason, msg.body, msg.body_size) == (404, "Not Found", b"not here!", 9)


@pytest.mark.parametrize("split", SPLITS)
def test_repeated_headers_kept_in_order(split):
    head = (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVary: Accept\r\nSet-Cookie: b=2\r\n"
            b"set-cookie: c=3\r\nContent-Length: 0\r\n\r\n")
    [msg] = read(RESPONSE, head, split)[0].messages()
    assert [v for k, v in msg.headers if k.lower() == "set-cookie"] == ["a=1", "b=2", "c=3"]
    assert msg.header("SET-COOKIE") == "a=1"


@pytest.mark.parametrize("split", SPLITS)
def test_obs_fold_is_joined_with_a_space(split):
    data = b"GET / HTTP/1.1\r\nX-Long: first\r\n  second\r\n\tthird\r\nHost: a\r\n\r\n"
    [msg] = read(REQUEST, data, split)[0].messages()
    assert msg.headers == (("X-Long", "first second third"), ("Host", "a"))


def test_header_values_are_latin1_and_trimmed():
    [msg] = read(REQUEST, b"GET /caf\xe9 HTTP/1.1\r\nX-Name:   Jos\xe9 \t\r\nEmpty:\r\n\r\n")[0].messages()
    assert msg.target == "/caf\u00e9"
    assert msg.headers == (("X-Name", "Jos\u00e9"), ("Empty", ""))


@pytest.mark.parametrize("split", SPLITS)
def test_bare_lf_line_endings_are_tolerated(split):
    [msg] = read(RESPONSE, b"HTTP/1.1 200 OK\nContent-Length: 2\nX: y\n\nok", split)[0].messages()
    assert msg.headers == (("Content-Length", "2"), ("X", "y")) and msg.body == b"ok"


def test_status_line_without_reason():
    [msg] = read(RESPONSE, b"HTTP/1.1 204\r\n\r\n")[0].messages()
    assert (msg.status, msg.reason) == (204, "")


@pytest.mark.parametrize("text, reason", [
    ("GET / HTTP/1.1\r\nHost a", "bad header line"),
    ("GET / HTTP/1.1\r\nHost : a", "bad header line"),
    ("GET / HTTP/1.1\r\n folded: first", "continuation"),
    ("GET / HTTP/2.0", "bad request line"),
    ("GET  / HTTP/1.1", "bad request line"),
    ("G(T / HTTP/1.1", "bad request line"),
    ("HTTP/1.1 20 OK", "bad status line"),
    ("HTTP/1.1 2000 OK", "bad status line"),
    ("GET / HTTP/1.1\r\nContent-Length: 5, 6", "conflicting"),
    ("GET / HTTP/1.1\r\nContent-Length: -1", "bad Content-Length"),
])
def test_parse_head_rejects(text, reason):
    with pytest.raises(MalformedHead, match=reason):
        parse_head(text, EITHER)


def test_parse_head_accepts_identical_content_lengths():
    assert parse_head("GET / HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5", REQUEST).content_length == 5


def test_parse_chunk_size():
    assert parse_chunk_size(b"1a") == 26
    assert parse_chunk_size(b"FF;name=value;x") == 255
    assert parse_chunk_size(b"5 ; ext\r") == 5
    for bad in (b"", b"0x5", b"-1", b"+5", b"1_0", b"g", b"12345678901234567"):
        assert parse_chunk_size(bad) == -1


# -- bodies -------------------------------------------------------------------------------------------

CHUNKED_RESPONSE = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                    b"5;name=value\r\nhello\r\n6 ; quoted=\"a;b\"\r\n world\r\n10\r\n0123456789abcdef\r\n"
                    b"0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")


@pytest.mark.parametrize("split", SPLITS)
def test_chunked_with_extensions_and_trailers(split):
    [msg] = read(RESPONSE, CHUNKED_RESPONSE, split)[0].messages()
    assert msg.body == b"hello world0123456789abcdef" and msg.body_size == 27
    assert msg.trailers == (("X-Checksum", "abc"), ("X-Other", "1"))


@pytest.mark.parametrize("split", SPLITS)
def test_chunked_request_then_next_request(split):
    data = (b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            b"GET /next HTTP/1.1\r\n\r\n")
    first, second = read(REQUEST, data, split)[0].messages()
    assert (first.body, first.trailers, second.target) == (b"abc", (), "/next")


@pytest.mark.parametrize("split", SPLITS)
def test_response_to_head_has_no_body(split):
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    rec, _ = read(RESPONSE, data, split, methods=["HEAD", "GET"])
    first, second = rec.messages()
    assert (first.body_size, second.body) == (0, b"ok")


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status):
    data = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz" % status
    first, second = read(RESPONSE, data)[0].messages()
    assert (first.status, first.body_size, second.body) == (status, 0, b"z")


@pytest.mark.parametrize("split", SPLITS)
def test_interim_responses_are_not_the_answer(split):
    data = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    rec, reader = read(RESPONSE, data, split)
    [msg] = rec.messages()
    assert msg.status == 200 and len(rec.started) == 1
    assert reader.stats["interim_responses"] == 2


@pytest.mark.parametrize("split", SPLITS)
def test_close_delimited_response_completes_on_eof(split):
    data = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close"
    rec, reader = read(RESPONSE, data, split)
    assert rec.finished == [] and reader.message.size == 16
    reader.receive_eof(99)
    [b] = rec.finished
    assert not b.cut_off and b.build().body == b"body until close"


def test_response_transfer_encoding_without_chunked_is_close_delimited():
    rec, reader = read(RESPONSE, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz", eof=True)
    assert rec.messages()[0].body == b"xyz"


def test_request_transfer_encoding_without_chunked_is_an_error():
    rec, reader = read(REQUEST, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxyz")
    assert rec.finished == [] and reader.stats["parse_errors"] == 1 and rec.lost == [F_PARSE_ERROR]


@pytest.mark.parametrize("split", SPLITS)
def test_pipelined_requests_in_one_write(split):
    data = (b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\nGET /4 HTTP/1.1\r\n\r\n")
    messages = read(REQUEST, data, split)[0].messages()
    assert [(m.method, m.target, m.body) for m in messages] == [
        ("GET", "/1", b""), ("POST", "/2", b"abc"), ("PUT", "/3", b"z"), ("GET", "/4", b"")]


@pytest.mark.parametrize("split", SPLITS)
def test_101_switches_to_opaque(split):
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05HelloHTTP/1.1 200 OK\r\n\r\n"
    rec, reader = read(RESPONSE, data, split)
    [b] = rec.finished
    assert b.status == 101 and b.flags & F_UPGRADED and reader.state == OPAQUE
    assert reader.stats["opaque_bytes"] == 7 + len(b"HTTP/1.1 200 OK\r\n\r\n")


def test_connect_2xx_switches_but_other_methods_do_not():
    rec, reader = read(RESPONSE, b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03", methods=["CONNECT"])
    assert reader.state == OPAQUE and rec.finished[0].flags & F_UPGRADED
    rec, reader = read(RESPONSE, b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n", methods=["CONNECT"])
    assert reader.state != OPAQUE


def test_max_body_caps_what_is_kept_not_what_is_counted():
    rec, _ = read(RESPONSE, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", "bytes", max_body=4)
    [b] = rec.finished
    msg = b.build()
    assert (msg.body, msg.body_size, msg.truncated) == (b"0123", 10, True) and b.flags & F_TRUNCATED


@pytest.mark.parametrize("split", SPLITS)
def test_timestamps_of_first_and_last_byte(split):
    recorder = Recorder()
    reader = MessageReader(RESPONSE, recorder, stats={})
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-", 100)
    reader.receive_data(b"Length: 4\r\n\r\nab", 200)
    reader.receive_data(b"cdHTTP/1.1 200 OK\r\nConte", 300)
    reader.receive_data(b"nt-Length: 0\r\n\r\n", 400)
    first, second = recorder.messages()
    assert (first.first_byte_ns, first.last_byte_ns) == (100, 300)
    assert (second.first_byte_ns, second.last_byte_ns) == (300, 400)


# -- damage: malformed input ----------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_malformed_header_drops_the_message_and_resyncs(split):
    data = (b"GET /ok HTTP/1.1\r\n\r\nGET /bad HTTP/1.1\r\nthis is not a header\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    rec, reader = read(REQUEST, data, split)
    ok, following = rec.messages()
    assert (ok.target, following.target) == ("/ok", "/next")
    assert rec.finished[1].flags & F_PARSE_ERROR and not rec.finished[0].flags
    assert rec.lost == [F_PARSE_ERROR] and reader.stats["parse_errors"] == 1


@pytest.mark.parametrize("split", SPLITS)
def test_resync_finds_a_status_line_after_garbage(split):
    data = (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\x00\x01garbage\r\nmore HTTP/1.1 200 junk\r\n"
            b"HTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\n!")
    rec, reader = read(RESPONSE, data, split)
    assert [m.status for m in rec.messages()] == [200, 500]
    assert rec.finished[1].flags & F_PARSE_ERROR


@pytest.mark.parametrize("split", SPLITS)
def test_bad_chunk_size_breaks_the_message(split):
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nHTTP/1.1 204 No\r\n\r\n"
    rec, reader = read(RESPONSE, data, split)
    broken, following = rec.finished
    assert broken.broken and broken.flags & F_PARSE_ERROR and broken.build().body == b"abc"
    assert following.status == 204 and following.flags & F_PARSE_ERROR


def test_chunk_data_not_followed_by_crlf_is_an_error():
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"
    rec, reader = read(RESPONSE, data)
    assert rec.finished[0].broken and reader.stats["parse_errors"] == 1


@pytest.mark.parametrize("split", ["whole", "thirds"])
def test_header_block_over_the_cap_is_a_parse_error(split):
    big = b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 2000 + b"\r\n\r\n"
    rec, reader = read(REQUEST, big + b"GET /after HTTP/1.1\r\n\r\n", split, max_header=1024)
    assert [m.target for m in rec.messages()] == ["/after"]
    assert reader.stats["parse_errors"] == 1 and len(reader.buffer) == 0


def test_unterminated_huge_head_does_not_buffer_past_the_cap():
    rec = Recorder()
    reader = MessageReader(REQUEST, rec, stats={}, max_header=1024)
    reader.receive_data(b"GET / HTTP/1.1\r\n", 1)
    for ts in range(100):
        reader.receive_data(b"X-A: " + b"b" * 100 + b"\r\n", ts)
        assert len(reader.buffer) <= 1024 + 200
    assert reader.stats["parse_errors"] >= 1


def test_garbage_before_any_http_is_skipped_quietly():
    rec, reader = read(EITHER, b"\x00\x01\x02 not http at all\r\n" * 5 + b"GET / HTTP/1.1\r\n\r\n")
    [msg] = rec.messages()
    assert msg.target == "/" and not rec.finished[0].flags
    assert reader.stats["parse_errors"] == 0 and reader.stats["skipped_bytes"] > 0
    assert rec.kinds == [REQUEST]


@pytest.mark.parametrize("split", SPLITS)
def test_mid_stream_reader_skips_the_tail_of_an_old_message(split):
    data = b"of an old body\r\nwith lines\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    rec, reader = read(RESPONSE, data, split, mid_stream=True)
    [b] = rec.finished
    assert b.status == 200 and b.flags == 0 and reader.stats["parse_errors"] == 0


@pytest.mark.parametrize("split", SPLITS)
def test_either_kind_decides_from_the_first_start_line(split):
    rec, reader = read(EITHER, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", split)
    assert reader.kind == RESPONSE and rec.kinds == [RESPONSE]


def test_request_reader_rejects_a_status_line():
    rec, reader = read(REQUEST, b"GET / HTTP/1.1\r\n\r\nHTTP/1.1 200 OK\r\n\r\nGET /x HTTP/1.1\r\n\r\n")
    assert [m.target for m in rec.messages()] == ["/", "/x"] and reader.stats["parse_errors"] == 1


# -- damage: missing bytes ------------------------------------------------------------------------

def test_truncation_inside_a_body_is_counted_and_flagged():
    rec = Recorder()
    reader = MessageReader(RESPONSE, rec, stats={})
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123", 1)
    reader.receive_missing(6, 1, TRUNCATED)
    reader.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n", 2)
    first, second = rec.finished
    msg = first.build()
    assert (msg.body, msg.body_size, msg.truncated) == (b"0123", 10, True)
    assert first.flags == F_TRUNCATED and not first.broken
    assert second.status == 204 and second.flags == 0


def test_truncation_in_chunk_data_keeps_framing():
    rec = Recorder()
    reader = MessageReader(RESPONSE, rec, stats={})
    reader.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nabc", 1)
    reader.receive_missing(5, 1, TRUNCATED)
    reader.receive_data(b"\r\n2\r\nyz\r\n0\r\n\r\n", 2)
    [b] = rec.finished
    assert (b.build().body, b.size, b.broken) == (b"abcyz", 10, False)


def test_truncation_past_the_end_of_a_body_loses_the_next_head():
    rec = Recorder()
    reader = MessageReader(REQUEST, rec, stats={})
    reader.receive_data(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 1)
    reader.receive_missing(30, 1, TRUNCATED)        # 2 body bytes + the start of the next request
    reader.receive_data(b"ost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 2)
    first, second = rec.finished
    assert first.size == 4 and first.truncated and not first.broken
    assert rec.lost == [F_TRUNCATED | F_GAP]
    assert second.target == "/b" and second.flags == 0   # what was skipped is the lost message's rest


@pytest.mark.parametrize("cause, bit", [(TRUNCATED, F_TRUNCATED), (LOST, F_GAP), (NOT_VISIBLE, F_NOT_VISIBLE)])
def test_missing_bytes_inside_a_head_are_a_gap(cause, bit):
    rec = Recorder()
    reader = MessageReader(REQUEST, rec, stats={})
    reader.receive_data(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHo", 1)
    reader.receive_missing(10, 1, cause)
    reader.receive_data(b"-Agent: x\r\n\r\nGET /c HTTP/1.1\r\n\r\n", 2)
    assert [m.target for m in rec.messages()] == ["/a", "/c"]
    assert rec.lost == [bit | F_GAP] and reader.stats["framing_lost"] == 1 and reader.stats["parse_errors"] == 0


def test_missing_bytes_in_a_chunk_size_line_break_the_message():
    rec = Recorder()
    reader = MessageReader(RESPONSE, rec, stats={})
    reader.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1", 1)
    reader.receive_missing(100, 1, LOST)
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)
    broken, following = rec.finished
    assert broken.broken and broken.flags & F_GAP and broken.build().body == b"abc"
    assert following.status == 200


def test_gap_inside_a_content_length_body_keeps_the_message():
    rec = Recorder()
    reader = MessageReader(RESPONSE, rec, stats={})
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01", 1)
    reader.receive_missing(4, 2, LOST)
    reader.receive_data(b"6789", 3)
    [b] = rec.finished
    assert (b.build().body, b.size, b.flags, b.last_ts) == (b"016789", 10, F_GAP, 3)


def test_sendfile_body_is_counted_not_visible():
    rec = Recorder()
    reader = MessageReader(RESPONSE, rec, stats={})
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", 1)
    reader.receive_missing(5000, 2, NOT_VISIBLE)
    [b] = rec.finished
    msg = b.build()
    assert (msg.body, msg.body_size, msg.truncated, b.flags) == (b"", 5000, True, F_NOT_VISIBLE)


def test_missing_bytes_in_a_close_delimited_body_are_counted():
    rec = Recorder()
    reader = MessageReader(RESPONSE, rec, stats={})
    reader.receive_data(b"HTTP/1.0 200 OK\r\n\r\nabc", 1)
    reader.receive_missing(7, 1, TRUNCATED)
    reader.receive_eof(2)
    assert rec.finished[0].size == 10 and rec.finished[0].flags == F_TRUNCATED


def test_eof_inside_a_body_cuts_the_message_off():
    rec, reader = read(RESPONSE, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", eof=True)
    [b] = rec.finished
    assert b.cut_off and b.truncated and b.size == 3


def test_abort_cuts_off_even_a_close_delimited_body():
    rec, reader = read(RESPONSE, b"HTTP/1.0 200 OK\r\n\r\nabc")
    reader.abort(5)
    assert rec.finished[0].cut_off and not rec.finished[0].truncated


def test_missing_bytes_in_sync_drop_the_partial_line():
    rec = Recorder()
    reader = MessageReader(REQUEST, rec, stats={}, mid_stream=True)
    reader.receive_data(b"tail of something\r\nGET /x HTT", 1)
    reader.receive_missing(3, 1, LOST)
    reader.receive_data(b"GET /y HTTP/1.1\r\n\r\n", 2)
    assert [m.target for m in rec.messages()] == ["/y"] and reader.state != SYNC


def test_resync_tries_a_start_line_where_an_event_begins():
    # After a loss, the rest of a body with no newline at its end is kept as a partial line; the next
    # write's status line must not be glued to it (it would never be found, nor the ones after it).
    rec = Recorder()
    reader = MessageReader(RESPONSE, rec, stats={})
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-", 1)
    reader.receive_missing(20, 2, LOST)
    reader.receive_data(b"\r\n\r\n{\"id\": 1}", 2)
    reader.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n", 3)
    reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 4)
    assert [m.status for m in rec.messages()] == [204, 200]
    # A request line too, read whole (not as method "abcGET")
    rec = Recorder()
    reader = MessageReader(REQUEST, rec, stats={})
    reader.receive_data(b"POST /a HTTP/1.1\r\nContent-", 1)
    reader.receive_missing(20, 2, LOST)
    reader.receive_data(b"\r\n\r\nabc", 2)
    reader.receive_data(b"GET /b HTTP/1.1\r\n\r\n", 3)
    assert [(m.method, m.target) for m in rec.messages()] == [("GET", "/b")]
    # ... but a start line cut in two events is still one
    rec = Recorder()
    reader = MessageReader(REQUEST, rec, stats={}, mid_stream=True)
    reader.receive_data(b"G", 1)
    reader.receive_data(b"ET /c HTTP/1.1\r\n\r\n", 2)
    assert [(m.method, m.target) for m in rec.messages()] == [("GET", "/c")]


# -- pausing after a request that may switch protocols ---------------------------------------------

def test_paused_reader_defers_everything_until_resumed():
    rec = Recorder()
    rec.next_state["GET"] = 9   # PAUSED
    reader = MessageReader(REQUEST, rec, stats={})
    reader.receive_data(b"GET /up HTTP/1.1\r\nUpgrade: h2c\r\n\r\nGET /b HTTP/1.1\r\n", 1)
    reader.receive_data(b"\r\n", 2)
    assert len(rec.finished) == 1 and reader.buffered() > 0
    rec.next_state.clear()
    reader.resume()
    assert [m.target for m in rec.messages()] == ["/up", "/b"] and reader.buffered() == 0
    assert rec.finished[1].first_ts == 1


def test_go_opaque_drops_what_waited():
    rec = Recorder()
    rec.next_state["CONNECT"] = 9
    reader = MessageReader(REQUEST, rec, stats={})
    reader.receive_data(b"CONNECT h:443 HTTP/1.1\r\n\r\n\x16\x03\x01", 1)
    reader.go_opaque()
    reader.receive_data(b"GET / HTTP/1.1\r\n\r\n", 2)
    assert len(rec.finished) == 1 and reader.buffered() == 0 and reader.stats["opaque_bytes"] == 3 + 18


# -- decoded_body -----------------------------------------------------------------------------------

def message(body: bytes, *headers: tuple[str, str], truncated=False) -> Message:
    return Message("HTTP/1.1", tuple(headers), body, len(body), truncated, 0, 0, status=200, reason="OK")


TEXT = b"The quick brown fox jumps over the lazy dog. " * 50


def test_decoded_body_gzip_and_deflate():
    assert decoded_body(message(gzip.compress(TEXT), ("Content-Encoding", "gzip"))) == TEXT
    assert decoded_body(message(gzip.compress(TEXT), ("content-encoding", "X-GZIP"))) == TEXT
    assert decoded_body(message(zlib.compress(TEXT), ("Content-Encoding", "deflate"))) == TEXT
    raw = zlib.compressobj(wbits=-15)
    assert decoded_body(message(raw.compress(TEXT) + raw.flush(), ("Content-Encoding", "deflate"))) == TEXT


def test_decoded_body_several_codings_and_transfer_codings():
    body = zlib.compress(gzip.compress(TEXT))
    assert decoded_body(message(body, ("Content-Encoding", "gzip, deflate"))) == TEXT
    both = gzip.compress(zlib.compress(TEXT))
    assert decoded_body(message(both, ("Content-Encoding", "deflate"), ("Transfer-Encoding", "gzip, chunked"))) == TEXT
    assert decoded_body(message(TEXT, ("Content-Encoding", "identity"))) == TEXT


def test_decoded_body_multi_member_gzip():
    body = gzip.compress(b"one ") + gzip.compress(b"two")
    assert decoded_body(message(body, ("Content-Encoding", "gzip"))) == b"one two"


def test_decoded_body_falls_back_to_raw():
    assert decoded_body(message(b"not gzip at all", ("Content-Encoding", "gzip"))) == b"not gzip at all"
    assert decoded_body(message(b"\x00brotli", ("Content-Encoding", "br"))) == b"\x00brotli"
    assert decoded_body(message(TEXT)) is not None
    plain = message(TEXT)
    assert decoded_body(plain) is plain.body


def test_decoded_body_of_a_truncated_body_goes_as_far_as_it_can():
    cut = gzip.compress(TEXT)[:60]
    out = decoded_body(message(cut, ("Content-Encoding", "gzip"), truncated=True))
    assert out and TEXT.startswith(out)


def test_decoded_body_is_capped():
    bomb = gzip.compress(b"\x00" * (4 << 20))
    assert len(decoded_body(message(bomb, ("Content-Encoding", "gzip")), max_size=1000)) == 1000


def test_http2_prior_knowledge_preface_makes_the_reader_opaque():
    rec, reader = read(EITHER, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00")
    assert reader.state == OPAQUE and reader.stats["parse_errors"] == 0 and rec.finished == []
