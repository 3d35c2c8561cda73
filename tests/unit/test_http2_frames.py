"""http2.FrameReader on its own: framing, header blocks, padding, damage control, resync."""
from __future__ import annotations

import random

import pytest
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, PriorityFrame,
                              PushPromiseFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame)
from hypothesis import given, settings, strategies as st

from httptrace.exchange import F_GAP, F_HPACK_INCOMPLETE, F_PARSE_ERROR, F_TRUNCATED
from httptrace.http2 import (ACCEPT, LOST, MORE, PREFACE, REJECT, TRUNCATED, FrameReader, chain_verdict,
                             is_server_preface, plausible_header)


class Sink:
    """Records what a reader reports, with DATA joined per stream."""

    def __init__(self):
        self.events = []
        self.bodies: dict[int, bytearray] = {}
        self.missing: dict[int, int] = {}

    def h2_headers(self, reader, stream_id, fields, end_stream, bits, first_ts):
        self.events.append(("headers", stream_id, fields, end_stream, bits))

    def h2_push_promise(self, reader, stream_id, promised_id, fields, bits, first_ts):
        self.events.append(("push", stream_id, promised_id, fields, bits))

    def h2_data(self, reader, stream_id, view, start, stop):
        self.bodies.setdefault(stream_id, bytearray()).extend(view[start:stop])

    def h2_data_missing(self, reader, stream_id, count, bit):
        self.missing[stream_id] = self.missing.get(stream_id, 0) + count
        self.events.append(("missing", stream_id, count, bit))

    def h2_end_stream(self, reader, stream_id):
        self.events.append(("end", stream_id))

    def h2_reset(self, reader, stream_id, code):
        self.events.append(("reset", stream_id, code))

    def h2_goaway(self, reader, last_stream_id, code):
        self.events.append(("goaway", last_stream_id, code))

    def h2_settings(self, reader, values):
        self.events.append(("settings", values))

    def h2_stream_damaged(self, reader, stream_id, bits):
        self.events.append(("damaged", stream_id, bits))

    def h2_framing_lost(self, reader, bits):
        self.events.append(("lost", bits))

    def of(self, kind):
        return [event for event in self.events if event[0] == kind]


def reader_for(*, preface=False, synced=True, complete=True, max_header_block=256 << 10):
    sink = Sink()
    reader = FrameReader(0, sink, complete_hpack=complete, expect_preface=preface, synced=synced,
                         settings_known=synced, max_header_block=max_header_block)
    return reader, sink


def feed(reader, data: bytes, split="whole", seed=0) -> None:
    if split == "bytes":
        for i in range(len(data)):
            reader.receive_data(data[i:i + 1], i)
    elif split == "random":
        rng = random.Random(seed)
        at = 0
        while at < len(data):
            size = rng.randint(1, 30)
            reader.receive_data(data[at:at + size], at)
            at += size
    else:
        reader.receive_data(data, 0)


def headers_frame(stream_id, encoder, fields, *, end_stream=False, end_headers=True, pad=None, priority=False):
    frame = HeadersFrame(stream_id, encoder.encode(fields))
    if end_stream:
        frame.flags.add("END_STREAM")
    if end_headers:
        frame.flags.add("END_HEADERS")
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    if priority:
        frame.flags.add("PRIORITY")
        frame.depends_on, frame.stream_weight = 3, 200
    return frame.serialize()


def data_frame(stream_id, payload, *, end_stream=False, pad=None):
    frame = DataFrame(stream_id, payload)
    if end_stream:
        frame.flags.add("END_STREAM")
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame.serialize()


REQUEST = [(":method", "GET"), (":path", "/x"), (":scheme", "http"), (":authority", "h"), ("user-agent", "t")]


@pytest.mark.parametrize("split", ["whole", "bytes", "random"])
def test_preface_headers_padded_data_and_noise_frames(split):
    encoder = Encoder()
    wire = (PREFACE + SettingsFrame(0, {1: 4096, 5: 16384}).serialize() + SettingsFrame(0, flags=["ACK"]).serialize()
            + WindowUpdateFrame(0, 1000).serialize() + PingFrame(0, b"12345678").serialize()
            + headers_frame(1, encoder, REQUEST, pad=7, priority=True) + PriorityFrame(1, 0, 10).serialize()
            + data_frame(1, b"hello ", pad=20) + data_frame(1, b"", pad=0) + data_frame(1, b"world", end_stream=True))
    reader, sink = reader_for(preface=True)
    feed(reader, wire, split)
    assert sink.of("settings") == [("settings", {1: 4096, 5: 16384})]
    assert sink.of("headers") == [("headers", 1, REQUEST, False, 0)]
    assert bytes(sink.bodies[1]) == b"hello world"
    assert sink.of("end") == [("end", 1)]
    assert not sink.of("lost") and not sink.of("damaged")
    assert reader.buffer == b""


@pytest.mark.parametrize("split", ["whole", "bytes"])
def test_continuation_joins_a_block_across_frames(split):
    encoder = Encoder()
    fields = REQUEST + [("x-big", "v" * 300), ("x-more", "w" * 50)]
    block = encoder.encode(fields)
    first = HeadersFrame(3, block[:10])
    first.flags.add("END_STREAM")
    middle = ContinuationFrame(3, block[10:100])
    last = ContinuationFrame(3, block[100:], flags=["END_HEADERS"])
    reader, sink = reader_for()
    feed(reader, first.serialize() + middle.serialize() + last.serialize(), split)
    assert sink.of("headers") == [("headers", 3, fields, True, 0)]


def test_a_frame_interleaving_a_header_block_breaks_it():
    encoder = Encoder()
    block = encoder.encode(REQUEST)
    reader, sink = reader_for()
    feed(reader, HeadersFrame(3, block[:5]).serialize() + data_frame(3, b"x")
         + ContinuationFrame(3, block[5:], flags=["END_HEADERS"]).serialize())
    assert not sink.of("headers")
    assert sink.of("damaged")[0][2] & F_HPACK_INCOMPLETE
    assert not reader.decoder.complete      # that block may have inserted entries: table now partial


def test_push_promise_rst_goaway():
    encoder = Encoder()
    promised = [(":method", "GET"), (":path", "/style.css"), (":scheme", "http"), (":authority", "h")]
    push = PushPromiseFrame(1, 2, encoder.encode(promised), flags=["END_HEADERS"])
    wire = (push.serialize() + RstStreamFrame(5, 8).serialize()
            + GoAwayFrame(0, last_stream_id=7, error_code=2, additional_data=b"bye").serialize())
    reader, sink = reader_for()
    feed(reader, wire, "bytes")
    assert sink.events == [("push", 1, 2, promised, 0), ("reset", 5, 8), ("goaway", 7, 2)]


def test_padding_longer_than_the_frame_is_an_error_on_that_stream_only():
    encoder = Encoder()
    bad = bytearray(data_frame(1, b"abc", pad=2))
    bad[9] = 200                            # pad length beyond the frame
    reader, sink = reader_for()
    feed(reader, bytes(bad) + headers_frame(3, encoder, REQUEST, end_stream=True))
    assert sink.of("damaged") == [("damaged", 1, F_PARSE_ERROR)]
    assert sink.of("headers") == [("headers", 3, REQUEST, True, 0)]     # framing survived


def test_missing_bytes_inside_data_are_counted_not_fatal():
    encoder = Encoder()
    reader, sink = reader_for()
    frame = data_frame(1, b"a" * 100, end_stream=True)
    reader.receive_data(frame[:30], 1)
    assert reader.absorbs(50)
    reader.receive_missing(50, 2, TRUNCATED)
    reader.receive_data(frame[80:] + headers_frame(3, encoder, REQUEST), 3)
    assert sink.missing == {1: 50}
    assert sink.of("missing") == [("missing", 1, 50, F_TRUNCATED)]
    assert bytes(sink.bodies[1]) == b"a" * 50
    assert sink.of("end") == [("end", 1)]
    assert sink.of("headers")


def test_missing_bytes_inside_a_headers_frame_lose_that_block_not_the_framing():
    encoder = Encoder()
    first = headers_frame(1, encoder, REQUEST)
    second = headers_frame(3, encoder, REQUEST + [("x-new", "literal")])
    reader, sink = reader_for()
    reader.receive_data(first[:12], 1)
    reader.receive_missing(len(first) - 12, 2, LOST)
    reader.receive_data(second, 3)
    assert sink.of("damaged")[0][1] == 1
    assert not sink.of("lost")
    [(_, stream, fields, _, bits)] = sink.of("headers")
    # Fields referencing the first block's insertions are unknown, the rest are right.
    assert stream == 3 and bits & F_HPACK_INCOMPLETE
    assert ("x-new", "literal") in fields and (":method", "GET") in fields
    assert all(field in REQUEST + [("x-new", "literal")] for field in fields)


@pytest.mark.parametrize("split", ["whole", "random"])
def test_a_gap_between_frames_resyncs_on_the_next_frames(split):
    encoder = Encoder()
    reader, sink = reader_for()
    feed(reader, headers_frame(1, encoder, REQUEST) + data_frame(1, b"x" * 40))
    reader.receive_missing(123, 5, LOST)             # the rest of stream 1 and who knows what
    after = (b"\x17" * 11 + headers_frame(5, encoder, [(":method", "POST"), (":path", "/y")], end_stream=True)
             + data_frame(7, b"z", end_stream=True))
    feed(reader, after[11:], split)
    assert sink.of("lost") == [("lost", F_GAP)]
    assert sink.of("headers")[-1][1:4] == (5, [(":method", "POST"), (":path", "/y")], True)
    assert sink.of("end")[-1] == ("end", 7)


def test_resync_on_a_header_read_apart_from_its_payload():
    # Go reads a frame's 9-byte header, then its payload: after a loss, neither event alone
    # shows a chain, but the frame begins where one event begins and ends where the next ends.
    encoder = Encoder()
    reader, sink = reader_for(synced=False, complete=False)
    frame = headers_frame(11, encoder, [(":method", "GET"), (":path", "/go")], end_stream=True)
    reader.receive_data(frame[:9], 1)
    assert not sink.events
    reader.receive_data(frame[9:], 2)
    assert sink.of("headers") == [("headers", 11, [(":method", "GET"), (":path", "/go")], True, 0)]


def test_garbage_where_a_header_should_be_resyncs():
    encoder = Encoder()
    reader, sink = reader_for()
    feed(reader, headers_frame(1, encoder, REQUEST) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
         + headers_frame(3, encoder, [(":method", "DELETE"), (":path", "/z")], end_stream=True)
         + data_frame(3, b"", end_stream=True))
    assert reader.stats["parse_errors"] >= 1
    assert ("headers", 3, [(":method", "DELETE"), (":path", "/z")], True, 0) in sink.events


def test_a_block_over_the_cap_is_not_decoded_and_hpack_goes_partial():
    encoder = Encoder()
    reader, sink = reader_for(max_header_block=1000)
    feed(reader, headers_frame(1, encoder, REQUEST + [("x-big", "q" * 5000)]) + headers_frame(3, encoder, REQUEST))
    assert sink.of("headers")[0][1:3] == (1, None)
    assert sink.of("headers")[0][4] & F_PARSE_ERROR
    assert not reader.decoder.complete


def test_mid_stream_reader_starts_at_plausible_frames():
    encoder = Encoder()
    encoder.encode(REQUEST)      # insertions we never see
    frames = headers_frame(9, encoder, REQUEST + [("x-seen", "1")], end_stream=True)
    reader, sink = reader_for(synced=False, complete=False)
    feed(reader, frames[4:])                 # the tail of a frame, then an event with a whole one
    feed(reader, frames)
    [(_, stream, fields, end, bits)] = sink.of("headers")
    assert stream == 9 and end and bits == F_HPACK_INCOMPLETE
    assert ("x-seen", "1") in fields and ("user-agent", "t") not in fields


def test_plausible_headers_and_chains():
    settings_frame = SettingsFrame(0, {3: 100}).serialize()
    ping = PingFrame(0, b"x" * 8).serialize()
    assert plausible_header(settings_frame, 0, 16384) and plausible_header(ping, 0, 16384)
    assert is_server_preface(settings_frame) and not is_server_preface(ping)
    assert not plausible_header(b"GET / HTTP/1.1", 0, 16384)
    assert not plausible_header(b"\x00" * 9, 0, 16384)     # DATA on stream 0
    wu = WindowUpdateFrame(0, 5).serialize()
    assert plausible_header(wu, 0, 16384)            # connection-level WINDOW_UPDATE is on stream 0
    assert chain_verdict(settings_frame + ping, 0, len(settings_frame + ping), 16384, False) == ACCEPT
    assert chain_verdict(settings_frame, 0, len(settings_frame), 16384, True) == ACCEPT
    assert chain_verdict(settings_frame, 0, len(settings_frame), 16384, False) == MORE
    assert chain_verdict(settings_frame[:9], 0, 9, 16384, True) == MORE        # Go reads the header alone
    assert chain_verdict(b"\x00\x00\x05\x77" + b"\x00" * 20, 0, 24, 16384, True) == REJECT


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans(), st.booleans())
def test_random_bytes_never_raise(data, synced, preface):
    reader, sink = reader_for(synced=synced, preface=preface, complete=synced)
    feed(reader, data, "random")
    reader.receive_missing(7, 1, LOST)
    feed(reader, data)
    reader.receive_eof(2)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_frames_never_raise_and_stay_bounded(data):
    encoder = Encoder()
    wire = bytearray(b"".join(headers_frame(i * 2 + 1, encoder, REQUEST + [("x-i", str(i))])
                              + data_frame(i * 2 + 1, b"body" * i, end_stream=True) for i in range(5)))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.integers(0, 255))
    reader, sink = reader_for()
    feed(reader, bytes(wire), "random", seed=data.draw(st.integers(0, 99)))
    assert len(reader.buffer) <= len(wire)
