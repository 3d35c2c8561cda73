"""Stage 3 for HTTP/2: a connection's streams become exchanges.

`Http2Session` is what the Reassembler holds for an HTTP/2 connection (the same interface as the
HTTP/1 session in sessions.py; see protocol.py).  Its two `http2.FrameReader`s report frames, and
it keeps one record per open stream:

- request = the client's first header block (+ DATA + trailers), response = the server's; 1xx
  blocks are informational and skipped; a response whose first block ends the stream is
  trailers-only (how gRPC reports most errors);
- a stream becomes an Exchange when both halves ended, on RST_STREAM (flag `reset`, code kept),
  when a GOAWAY says it was never processed (`refused`), or at close / idle expiry (`incomplete`);
- a PUSH_PROMISE opens a stream whose request is the promised one (`pushed`);
- a stream whose request we never saw (joined mid-connection, or lost) is skipped: without its
  request there is nothing to pair its response with;
- gRPC (content-type application/grpc*) streams count their length-prefixed messages as DATA
  goes by (grpc.MessageCounter), and their Exchange carries a GrpcCall.

Which direction is the client comes from the preface, the open event's role, or the first block
with `:method`.  Bounds: MAX_STREAMS open streams (the oldest is emitted incomplete past that) and
`max_body` kept per body, as for HTTP/1.
"""
from __future__ import annotations

import base64
import dataclasses

from .exchange import (F_GAP, F_INCOMPLETE, F_MID_STREAM, F_PARSE_ERROR, F_PUSHED, F_REFUSED, F_RESET, Connection,
                       Exchange, Role, flags_of)
from .grpc import MessageCounter, call_of, is_grpc
from .http1 import MessageBuilder
from .http2 import LOST, SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_FRAME_SIZE, FrameReader
from .streams import DirectionStream

MAX_STREAMS = 1024
EGRESS = 0
INGRESS = 1


class _Stream:
    __slots__ = ("id", "client", "request", "response", "ended", "bits", "reset_code", "counters", "kept",
                 "borrowed")

    def __init__(self, stream_id: int, client: int):
        self.id = stream_id
        self.client = client              # the direction that sent the request
        self.request: MessageBuilder | None = None
        self.response: MessageBuilder | None = None
        self.ended = [False, False]       # END_STREAM seen, per direction
        self.bits = 0
        self.reset_code: int | None = None
        self.counters: list[MessageCounter] | None = None   # gRPC, per direction
        self.kept = 0                     # body bytes this stream holds (its share of Http2Session._kept)
        self.borrowed = False             # the request is an HTTP/1.1 one (h2c upgrade), kept by it


def _status_of(value: str) -> int | None:
    return int(value) if len(value) == 3 and value.isascii() and value.isdigit() else None


_REQUEST_PSEUDO = frozenset((":method", ":path", ":scheme", ":authority", ":protocol"))
_REQUEST, _RESPONSE = 1, 2


def _block_kind(fields) -> int | None:
    """A request block (request pseudo-headers), a response block (:status), or neither (trailers,
    or a block whose pseudo-headers HPACK could not resolve)."""
    for name, _ in fields:
        if name[:1] != ":":
            return None
        if name in _REQUEST_PSEUDO:
            return _REQUEST
        if name == ":status":
            return _RESPONSE
    return None


def _leading_pseudo(fields, name: str) -> str | None:
    for field, value in fields:
        if field[:1] != ":":
            return None
        if field == name:
            return value
    return None


class Http2Session:
    """One HTTP/2 connection: two frame readers and the streams they carry.  See the module docstring."""

    tentative = ()      # HTTP/1's pairing-after-loss state: nothing of the kind here

    def __init__(self, owner, key, connection: Connection, *, streams, mid_stream: bool,
                 client_direction: int | None = None, conn_flags: int = 0, last_ts: int | None = None,
                 event_ts: list | None = None, upgrade_request: MessageBuilder | None = None,
                 upgrade_settings: dict | None = None):
        self.owner = owner
        self.key = key
        self.connection = connection
        self.role = connection.role
        self.exchange_connection = connection
        if client_direction is None and connection.role is not Role.UNKNOWN:
            client_direction = EGRESS if connection.role is Role.CLIENT else INGRESS
        self.client_direction = client_direction
        self.conn_flags = conn_flags
        self.mid_stream = mid_stream
        self.streams = streams
        self.last_ts = last_ts
        self.buffered = 0
        self.event_ts = event_ts if event_ts is not None else [None, None]
        self.max_body = owner.max_body
        at_start = not mid_stream
        self.readers = tuple(
            FrameReader(direction, self, complete_hpack=at_start,
                        expect_preface=at_start and direction == client_direction, synced=at_start,
                        settings_known=at_start, max_header_block=max(4 * owner.max_header, 64 << 10),
                        stats=owner._stats)
            for direction in (EGRESS, INGRESS))
        self._streams: dict[int, _Stream] = {}
        self._kept = 0            # body bytes held by open streams
        self._kept_stale = False  # bodies were handed out to be cut: recount before trusting _kept
        owner._stats["http2_connections"] += 1
        if client_direction is not None:
            self._learn_client(client_direction)
        if upgrade_request is not None and client_direction is not None:
            # h2c: stream 1 is the HTTP/1.1 request that asked for the upgrade; its answer comes as HTTP/2.
            stream = self._streams[1] = _Stream(1, client_direction)
            stream.request = upgrade_request
            stream.ended[client_direction] = True
            stream.borrowed = True
        if upgrade_settings and client_direction is not None:
            self.h2_settings(self.readers[client_direction], upgrade_settings)

    # -- the session interface the Reassembler uses (protocol.py) -----------------------------------

    def describe(self, connection: Connection) -> None:
        """The open event arrived after data: keep what we learnt, take its description."""
        self.connection = connection
        if self.role is Role.UNKNOWN and connection.role is not Role.UNKNOWN:
            self.role = connection.role
            if self.client_direction is None:
                self._learn_client(EGRESS if connection.role is Role.CLIENT else INGRESS)
        self._set_role(self.role)

    def lost_bytes(self, direction: int, gap) -> None:
        self.readers[direction].receive_missing(gap.size, gap.ts_ns, LOST)

    def request_bytes_follow(self) -> None:
        return None

    def restarted(self) -> Http2Session:
        """A fresh state for this connection, as if it had been caught mid-stream (after an internal error)."""
        owner = self.owner
        streams = tuple(DirectionStream(None, window=owner.reorder_window, timeout_ns=owner.reorder_timeout_ns,
                                        max_held_bytes=owner.max_connection_buffer) for _ in range(2))
        fresh = Http2Session(owner, self.key, self.exchange_connection, streams=streams, mid_stream=True,
                             client_direction=self.client_direction, conn_flags=self.conn_flags | F_MID_STREAM)
        fresh.last_ts = self.last_ts
        return fresh

    def measure(self) -> tuple[int, int]:
        """(unparsed bytes, all buffered bytes) this connection holds now."""
        egress, ingress = self.readers
        out_stream, in_stream = self.streams
        unparsed = (len(egress.buffer) + len(ingress.buffer) + egress.deferred_bytes + ingress.deferred_bytes
                    + out_stream.held_bytes + in_stream.held_bytes)
        if self._kept_stale:
            self._kept_stale = False
            self._kept = 0
            for stream in self._streams.values():
                stream.kept = sum(b.kept for b in self._own_builders(stream))
                self._kept += stream.kept
        return unparsed, unparsed + self._kept

    def bodies(self) -> list[MessageBuilder]:
        """Builders holding body bytes, for the global cap (which may cut them)."""
        self._kept_stale = True
        return [b for stream in self._streams.values() for b in self._own_builders(stream) if b.kept]

    def finish(self, ts_ns: int, eof: bool) -> None:
        """The connection closed (eof) or we stop watching it: every open stream ends incomplete."""
        for direction in (EGRESS, INGRESS):
            self.owner._feed(self, direction, self.streams[direction].release())
        for reader in self.readers:
            if eof:
                reader.receive_eof(ts_ns)
            else:
                reader.abort(ts_ns)
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            for direction in (EGRESS, INGRESS):
                b = stream.request if direction == stream.client else stream.response
                if b is not None and not stream.ended[direction]:
                    b.cut_off = True
                    b.truncated = True
            self._emit(stream)

    # -- sink interface for the FrameReaders --------------------------------------------------------

    def h2_headers(self, reader: FrameReader, stream_id: int, fields, end_stream: bool, bits: int,
                   first_ts: int) -> None:
        direction = reader.direction
        stream = self._streams.get(stream_id)
        if stream is None:
            if fields is None:
                return
            kind = _block_kind(fields)
            if kind != _REQUEST:
                if kind == _RESPONSE:
                    self.owner._stats["orphan_responses"] += 1      # its request came before we looked
                return      # an orphan response, trailers or a block we cannot place: nothing to pair
            if self.client_direction is None:
                self._learn_client(direction)
            stream = self._open(stream_id, direction)
            stream.request = self._message(fields, first_ts, reader.ts, bits, True)
            if is_grpc(fields):
                stream.counters = [MessageCounter(), MessageCounter()]
        elif stream.ended[direction]:
            stream.bits |= F_PARSE_ERROR        # frames after END_STREAM
            return
        elif direction == stream.client:
            self._trailers(stream.request, fields, bits, reader.ts)
        elif stream.response is None:
            if fields is None:
                stream.response = self._placeholder(reader, bits)     # undecodable
            else:
                status = _leading_pseudo(fields, ":status")
                code = _status_of(status) if status is not None else None
                if code is not None and code < 200:
                    self.owner._stats["interim_responses"] += 1      # 100 Continue, 103 Early Hints...
                    return
                stream.response = self._message(fields, first_ts, reader.ts, bits, False)
                if stream.counters is None and is_grpc(fields):
                    self._count_grpc_late(stream)
        else:
            self._trailers(stream.response, fields, bits, reader.ts)
        if end_stream:
            self._end(stream, direction)

    def h2_push_promise(self, reader: FrameReader, stream_id: int, promised_id: int, fields, bits: int,
                        first_ts: int) -> None:
        if fields is None or not promised_id or promised_id in self._streams:
            return
        client = 1 - reader.direction
        if self.client_direction is None:
            self._learn_client(client)
        stream = self._open(promised_id, client)
        stream.request = self._message(fields, first_ts, reader.ts, bits, True)
        stream.ended[client] = True         # a promised request has no body
        stream.bits |= F_PUSHED
        self.owner._stats["pushed_streams"] += 1

    def h2_data(self, reader: FrameReader, stream_id: int, view, start: int, stop: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self.owner._stats["skipped_bytes"] += stop - start
            return
        direction = reader.direction
        if stream.ended[direction]:
            stream.bits |= F_PARSE_ERROR
            return
        b = self._half(stream, direction, reader)
        kept = b.kept
        b.add_body(view, start, stop)
        if b.kept != kept:
            stream.kept += b.kept - kept
            self._kept += b.kept - kept
        b.last_ts = reader.ts
        if stream.counters is not None:
            stream.counters[direction].feed(view, start, stop)

    def h2_data_missing(self, reader: FrameReader, stream_id: int, count: int, bit: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.ended[reader.direction]:
            return
        b = self._half(stream, reader.direction, reader)
        b.add_missing(count, bit)
        b.last_ts = reader.ts
        if stream.counters is not None:
            stream.counters[reader.direction].skip(count)

    def h2_end_stream(self, reader: FrameReader, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.ended[reader.direction]:
            self._half(stream, reader.direction, reader).last_ts = reader.ts
            self._end(stream, reader.direction)

    def h2_reset(self, reader: FrameReader, stream_id: int, error_code: int) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self.owner._stats["resets"] += 1
        stream.bits |= F_RESET
        stream.reset_code = error_code
        self._emit(stream)

    def h2_goaway(self, reader: FrameReader, last_stream_id: int, error_code: int) -> None:
        # Streams the GOAWAY's receiver opened above last_stream_id were never processed.
        sender = reader.direction
        refused = [stream for stream in self._streams.values() if stream.id > last_stream_id
                   and (stream.client if stream.id % 2 else 1 - stream.client) != sender]
        for stream in refused:
            del self._streams[stream.id]
            stream.bits |= F_REFUSED
            self.owner._stats["refused_streams"] += 1
            self._emit(stream)

    def h2_settings(self, reader: FrameReader, settings: dict) -> None:
        # A peer's SETTINGS are limits on what the other side sends it.
        other = self.readers[1 - reader.direction]
        for setting, value in settings.items():
            if setting == SETTINGS_MAX_FRAME_SIZE:
                other.set_max_frame_size(value)
            elif setting == SETTINGS_HEADER_TABLE_SIZE:
                other.decoder.note_table_limit(value)

    def h2_stream_damaged(self, reader: FrameReader, stream_id: int, bits: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.bits |= bits

    def h2_framing_lost(self, reader: FrameReader, bits: int) -> None:
        # Any stream this side had not finished may have lost frames in what went by.
        direction = reader.direction
        for stream in self._streams.values():
            if not stream.ended[direction]:
                stream.bits |= bits

    # -- streams ------------------------------------------------------------------------------------

    def _learn_client(self, direction: int) -> None:
        self.client_direction = direction
        if self.role is Role.UNKNOWN:
            self._set_role(Role.CLIENT if direction == EGRESS else Role.SERVER)

    def _set_role(self, role: Role) -> None:
        self.role = role
        self.exchange_connection = dataclasses.replace(self.connection, role=role)

    def _open(self, stream_id: int, client: int) -> _Stream:
        if len(self._streams) >= MAX_STREAMS:
            oldest = next(iter(self._streams.values()))
            del self._streams[oldest.id]
            self.owner._stats["evicted_requests"] += 1
            self._emit(oldest)
        stream = self._streams[stream_id] = _Stream(stream_id, client)
        return stream

    def _message(self, fields, first_ts: int, ts: int, bits: int, request: bool) -> MessageBuilder:
        b = MessageBuilder()
        b.is_request = request
        b.version = "HTTP/2"
        b.headers = tuple(fields)
        b.first_ts = first_ts
        b.last_ts = ts
        b.flags = bits
        b.capture_left = self.max_body
        authority = None
        for name, value in fields:
            if name[:1] != ":":
                break       # pseudo-header fields come first (RFC 9113 section 8.3)
            if name == ":method":
                b.method = value
            elif name == ":path":
                b.target = value
            elif name == ":authority":
                authority = value
            elif name == ":status":
                b.status = _status_of(value)
                if b.status is None:
                    b.flags |= F_PARSE_ERROR
        if request:
            if b.target is None and b.method == "CONNECT":
                b.target = authority       # CONNECT names its target in :authority
        else:
            b.reason = ""
        return b

    def _placeholder(self, reader: FrameReader, bits: int) -> MessageBuilder:
        """A response whose header block we could not read (lost or undecodable)."""
        return self._message((), reader.ts, reader.ts, bits, False)

    def _half(self, stream: _Stream, direction: int, reader: FrameReader) -> MessageBuilder:
        if direction == stream.client:
            return stream.request
        if stream.response is None:
            stream.response = self._placeholder(reader, F_GAP)    # its HEADERS went by unseen
        return stream.response

    @staticmethod
    def _trailers(b: MessageBuilder, fields, bits: int, ts: int) -> None:
        if fields:
            b.trailers = tuple(fields)
        b.flags |= bits
        b.last_ts = ts

    def _count_grpc_late(self, stream: _Stream) -> None:
        """Only the response said gRPC: count the request's messages from what we kept of it."""
        stream.counters = [MessageCounter(), MessageCounter()]
        request = stream.request
        counter = stream.counters[stream.client]
        counter.feed_parts(request.parts)
        if request.kept < request.size:
            counter.synced = False

    def _end(self, stream: _Stream, direction: int) -> None:
        stream.ended[direction] = True
        if stream.ended[0] and stream.ended[1]:
            del self._streams[stream.id]
            self._emit(stream)

    def _own_builders(self, stream: _Stream):
        if stream.request is not None and not stream.borrowed:
            yield stream.request
        if stream.response is not None:
            yield stream.response

    def _emit(self, stream: _Stream) -> None:
        self._kept -= stream.kept
        request = stream.request
        response = stream.response
        bits = self.conn_flags | stream.bits | request.flags
        if response is not None:
            bits |= response.flags
        if not (stream.ended[0] and stream.ended[1]) and not bits & (F_RESET | F_REFUSED):
            bits |= F_INCOMPLETE
        request_message = request.build()
        response_message = response.build() if response is not None else None
        grpc = None
        if stream.counters is not None:
            client = stream.client
            grpc = call_of(request_message, response_message, stream.counters[client], stream.counters[1 - client])
        exchange = Exchange(self.exchange_connection, request_message, response_message, flags_of(bits),
                            stream.id, grpc, stream.reset_code)
        self.owner._completed(exchange, bits)


def parse_http2_settings(value: str | None) -> dict:
    """The HTTP2-Settings header of an h2c upgrade request: base64url SETTINGS payload -> {id: value}."""
    if not value:
        return {}
    try:
        raw = base64.urlsafe_b64decode(value.strip() + "=" * (-len(value.strip()) % 4))
    except (ValueError, TypeError):
        return {}
    return {int.from_bytes(raw[i:i + 2], "big"): int.from_bytes(raw[i + 2:i + 6], "big")
            for i in range(0, len(raw) - len(raw) % 6, 6)}
