"""Stage 2 of reassembly for HTTP/2: frames and header blocks for one direction, sans I/O.

A `FrameReader` is fed what one side sent, in stream order, with the calls http1.MessageReader
takes (receive_data / receive_missing / receive_eof / abort), and reports to its sink (the
connection's h2streams.Http2Session):

    sink.h2_headers(reader, stream_id, fields, end_stream, bits, first_ts)
    sink.h2_push_promise(reader, stream_id, promised_id, fields, bits, first_ts)
    sink.h2_data(reader, stream_id, view, start, stop)      # DATA payload, padding stripped
    sink.h2_data_missing(reader, stream_id, count, bit)     # payload bytes sent but not seen
    sink.h2_end_stream(reader, stream_id)
    sink.h2_reset(reader, stream_id, error_code)
    sink.h2_goaway(reader, last_stream_id, error_code)
    sink.h2_settings(reader, settings)                      # {id: value}, not ACKs
    sink.h2_stream_damaged(reader, stream_id, bits)         # a frame of that stream was unreadable
    sink.h2_framing_lost(reader, bits)                      # bytes of unknown content went by

`fields` is a list of (name, value) str pairs (latin-1, wire order, pseudo-headers included) with the
fields HPACK could not resolve left out (`bits` then has F_HPACK_INCOMPLETE), or None when the block
could not be decoded at all.  Frame headers and non-DATA frames are parsed with hyperframe; DATA
payloads stream through as they arrive, so a 16 MiB frame is never buffered.  Header blocks
(HEADERS or PUSH_PROMISE + CONTINUATION) are joined and decoded in wire order, whatever stream
they belong to: skipping one would desynchronise HPACK for the rest of the connection.

Damage control: bytes missing where a frame header or a header block was due, or a frame header
that cannot be one, lose the framing: the HPACK state of this direction becomes partial
(hpack_observer), open streams are flagged, and the reader resynchronises on a plausible chain of
frame headers (`chain_verdict`).  Missing bytes inside a DATA payload are just counted.
"""
from __future__ import annotations

import re

from hyperframe.frame import Frame

from .exchange import F_GAP, F_HPACK_INCOMPLETE, F_NOT_VISIBLE, F_PARSE_ERROR, F_TRUNCATED
from .hpack_observer import UNKNOWN, BlockDecoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Causes of missing bytes, as in http1 (kept equal so the Reassembler's constants apply).
TRUNCATED = 1
NOT_VISIBLE = 2
LOST = 3
_BIT_OF_CAUSE = {TRUNCATED: F_TRUNCATED, NOT_VISIBLE: F_NOT_VISIBLE, LOST: F_GAP}

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
SETTINGS_HEADER_TABLE_SIZE = 1
SETTINGS_MAX_FRAME_SIZE = 5
DEFAULT_MAX_FRAME_SIZE = 16384
LARGEST_FRAME = (1 << 24) - 1

# Flags each known frame type defines; a header with others set is not plausible when resyncing.
_DEFINED_FLAGS = (0x09, 0x2D, 0x00, 0x00, 0x01, 0x0C, 0x01, 0x00, 0x00, 0x04)
_ON_STREAM_ZERO = (False, False, False, False, True, False, True, True, None, False)   # None: either
_FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
# Types whose frames may be long; others above the default size are not believed while the peer's
# SETTINGS are unknown (so that junk read as a header cannot swallow megabytes).
_MAY_BE_LONG = (True, True, False, False, False, True, False, False, False, True)


def plausible_header(view, at: int, max_frame_size: int) -> bool:
    """Whether view[at:at+9] could be a frame header a conforming peer sends (RFC 9113 section 4)."""
    kind = view[at + 3]
    if kind > CONTINUATION or view[at + 5] & 0x80:
        return False
    length = view[at] << 16 | view[at + 1] << 8 | view[at + 2]
    flags = view[at + 4]
    if length > max_frame_size or flags & ~_DEFINED_FLAGS[kind]:
        return False
    zero = not (view[at + 5] | view[at + 6] | view[at + 7] | view[at + 8])
    must_be_zero = _ON_STREAM_ZERO[kind]
    if must_be_zero is not None and zero != must_be_zero:
        return False
    fixed = _FIXED_LENGTH.get(kind)
    if fixed is not None:
        return length == fixed
    if kind == SETTINGS:
        return length == 0 if flags & 1 else length % 6 == 0
    if kind == GOAWAY:
        return length >= 8
    return True


ACCEPT, MORE, REJECT = 1, 2, 3
_candidates: dict[int, re.Pattern] = {}


def _candidate_pattern(max_frame_size: int) -> re.Pattern:
    """A regex for positions whose first six bytes may begin a plausible header (a fast pre-filter:
    length within bounds, type <= 9, R bit clear)."""
    pattern = _candidates.get(max_frame_size)
    if pattern is None:
        if max_frame_size < 1 << 16:
            length = b"\\x00[\\x00-\\x%02x]." % (max_frame_size >> 8)
        else:
            length = b"[\\x00-\\x%02x].." % (max_frame_size >> 16)
        pattern = _candidates[max_frame_size] = re.compile(length + rb"[\x00-\x09].[\x00-\x7f]", re.S)
    return pattern


def chain_verdict(view, at: int, end: int, max_frame_size: int, at_event_start: bool) -> int:
    """Whether frames begin at view[at]: ACCEPT for two chained plausible headers, or one whose frame
    ends exactly where the bytes end if it began where an event began (events are syscalls: frames
    are written whole, and Go reads a header and then its payload); MORE when the bytes run out
    first; REJECT otherwise."""
    count = 0
    while count < 2:
        if at == end and count and at_event_start:
            return ACCEPT
        if at + 9 > end:
            return MORE
        if not plausible_header(view, at, max_frame_size):
            return REJECT
        at += 9 + (view[at] << 16 | view[at + 1] << 8 | view[at + 2])
        count += 1
    return ACCEPT


def is_server_preface(header) -> bool:
    """A server's first frame: SETTINGS, no flags, stream 0, a whole number of settings."""
    return (len(header) >= 9 and header[3] == SETTINGS and header[4] == 0 and not any(header[5:9])
            and (header[0] << 16 | header[1] << 8 | header[2]) % 6 == 0
            and (header[0] << 16 | header[1] << 8 | header[2]) <= DEFAULT_MAX_FRAME_SIZE)


# Reader states.
S_PREFACE = 0     # the client's 24-byte preface, still to skip
S_HEADER = 1      # at a frame boundary: 9 header bytes
S_PAYLOAD = 2     # a non-DATA frame's payload, taken whole
S_DATA = 3        # a DATA frame's content: `_remaining` bytes stream to the sink
S_PAD_LENGTH = 4  # a padded DATA frame's first byte
S_PADDING = 5     # a DATA frame's padding: `_padding` bytes to skip
S_SKIP = 6        # the rest of a frame we cannot use: `_remaining` bytes
S_SYNC = 7        # lost our place: looking for plausible frame headers
S_CLOSED = 8


class FrameReader:
    """Incremental HTTP/2 framing of what one side sends.  Never raises on bad input."""

    kind = 3   # http1.EITHER: the Reassembler only compares it for HTTP/1 bookkeeping

    def __init__(self, direction: int, sink, *, complete_hpack: bool, expect_preface: bool, synced: bool,
                 settings_known: bool, max_header_block: int = 256 << 10, stats: dict | None = None):
        self.direction = direction
        self.sink = sink
        self.stats = stats if stats is not None else {}
        for key in ("parse_errors", "skipped_bytes", "framing_lost", "hpack_unknown_fields"):
            self.stats.setdefault(key, 0)
        self.decoder = BlockDecoder(complete_hpack, max_header_list_size=max(4 * max_header_block, 1 << 20))
        self.max_header_block = max_header_block
        self.max_frame_size = DEFAULT_MAX_FRAME_SIZE    # the receiving peer's SETTINGS_MAX_FRAME_SIZE
        # Whether that value is known (we saw the connection start, or a SETTINGS frame with it):
        # unknown, long frames are believed in sync but never when resyncing.
        self.settings_known = settings_known
        self.buffer = bytearray()
        self.state = S_PREFACE if expect_preface else (S_HEADER if synced else S_SYNC)
        self._preface_at = 0
        self._frame: Frame | None = None
        self._kind = 0
        self._stream = 0
        self._length = 0
        self._remaining = 0
        self._padding = 0
        self._end_stream = False
        self._frame_ts = 0
        self._skip_bits = 0            # S_SKIP: why (flags for the frame's stream), 0 for an ignored frame
        # A header block being joined: HEADERS or PUSH_PROMISE, then CONTINUATIONs on its stream.
        self._block: list[bytes] | None = None
        self._block_stream = 0
        self._block_kind = 0
        self._block_end_stream = False
        self._block_promised = 0
        self._block_size = 0
        self._block_ts = 0
        self._block_too_large = False
        self._ts = 0
        self._buffer_ts = 0
        self._old_len = 0
        self._sync_starts: list[int] = []   # S_SYNC: where earlier events began in `buffer`

    def __repr__(self) -> str:
        return f"<FrameReader direction={self.direction} state={self.state} buffered={len(self.buffer)}>"

    # -- the reader interface (see httptrace/protocol.py) ------------------------------------------

    @property
    def ts(self) -> int:
        return self._ts

    @property
    def deferred_bytes(self) -> int:
        """Bytes held besides `buffer`: the header block being joined."""
        return self._block_size

    def receive_data(self, data, ts_ns: int) -> None:
        if not data or self.state == S_CLOSED:
            return
        self._ts = ts_ns
        if self.state == S_DATA and not self.buffer and len(data) <= self._remaining:
            # The bulk of a large body: straight to the stream.
            self._remaining -= len(data)
            self.sink.h2_data(self, self._stream, data, 0, len(data))
            if not self._remaining:
                self._data_content_done()
            return
        buffer = self.buffer
        if buffer:
            self._old_len = len(buffer)
            buffer += data
            view = buffer
        else:
            self._old_len = 0
            view = data
        consumed = self._run(view)
        if view is buffer:
            if consumed >= self._old_len:
                self._buffer_ts = ts_ns
            if consumed:
                del buffer[:consumed]
        elif consumed < len(data):
            self.buffer = bytearray(data[consumed:] if consumed else data)
            self._buffer_ts = ts_ns

    def receive_missing(self, count: int, ts_ns: int, cause: int) -> None:
        """`count` bytes that follow were sent but are not available (TRUNCATED, NOT_VISIBLE, LOST)."""
        while count > 0 and self.state != S_CLOSED:
            self._ts = ts_ns
            bit = _BIT_OF_CAUSE.get(cause, F_GAP)
            state = self.state
            if state == S_DATA and not self.buffer:
                take = min(count, self._remaining)
                self._remaining -= take
                count -= take
                self.sink.h2_data_missing(self, self._stream, take, bit)
                if not self._remaining:
                    self._data_content_done()
            elif state == S_PADDING:
                take = min(count, self._padding)
                self._padding -= take
                count -= take
                if not self._padding:
                    self._data_done()
            elif state == S_SKIP:
                take = min(count, self._remaining)
                self._remaining -= take
                count -= take
                if not self._remaining:
                    self.state = S_HEADER
            elif state == S_PAYLOAD and count <= self._length - len(self.buffer):
                # Inside a frame of known length: that frame is lost, the framing is not.
                self._remaining = self._length - len(self.buffer) - count
                self.stats["skipped_bytes"] += len(self.buffer)
                self.buffer = bytearray()
                count = 0
                self._frame_lost(bit | F_GAP)
                self.state = S_SKIP if self._remaining else S_HEADER
            elif state == S_PAD_LENGTH:
                # The split between content and padding is gone with it: skip the frame.
                self._remaining = self._length
                self.sink.h2_stream_damaged(self, self._stream, bit | F_GAP)
                self.state = S_SKIP
            else:
                self._lose_framing(bit | F_GAP)
                self.stats["skipped_bytes"] += len(self.buffer)
                self.buffer = bytearray()
                return

    def receive_eof(self, ts_ns: int) -> None:
        self._close(ts_ns)

    def abort(self, ts_ns: int) -> None:
        self._close(ts_ns)

    def absorbs(self, count: int) -> bool:
        """Whether `count` missing bytes would fall inside the current frame (framing survives)."""
        state = self.state
        if self.buffer and state != S_PAYLOAD:
            return False
        if state == S_DATA:
            return count <= self._remaining + self._padding
        if state == S_PADDING:
            return count <= self._padding
        if state == S_SKIP:
            return count <= self._remaining
        if state == S_PAYLOAD:
            return count <= self._length - len(self.buffer)
        return state == S_CLOSED

    def discard_buffer(self) -> int:
        """Memory pressure: drop unparsed bytes (and a header block being joined); returns the bytes."""
        dropped = len(self.buffer) + self._block_size
        if dropped == 0:
            return 0
        self.stats["parse_errors"] += 1
        self.stats["skipped_bytes"] += len(self.buffer)
        self.buffer = bytearray()
        self._lose_framing(F_PARSE_ERROR)
        return dropped

    # -- control from the session ------------------------------------------------------------------

    def set_max_frame_size(self, size: int) -> None:
        """The receiving peer's SETTINGS_MAX_FRAME_SIZE.  The largest value seen is kept: a lower one
        binds only once acknowledged, and frames already on their way may be longer."""
        if DEFAULT_MAX_FRAME_SIZE <= size <= LARGEST_FRAME:
            self.max_frame_size = max(self.max_frame_size, size)
            self.settings_known = True

    # -- the state machine -------------------------------------------------------------------------

    def _run(self, view) -> int:
        i = 0
        n = len(view)
        handlers = _HANDLERS
        while i < n:
            j = handlers[self.state](self, view, i)
            if j < 0:
                return ~j
            i = j
        return i

    def _on_preface(self, view, i: int) -> int:
        at = self._preface_at
        take = min(len(view) - i, len(PREFACE) - at)
        if view[i:i + take] != PREFACE[at:at + take]:
            self.stats["parse_errors"] += 1
            self._lose_framing(F_PARSE_ERROR)
            return i
        self._preface_at = at + take
        if self._preface_at == len(PREFACE):
            self.state = S_HEADER
        return i + take

    def _on_header(self, view, i: int) -> int:
        if len(view) - i < 9:
            return ~i
        header = bytes(view[i:i + 9])
        try:
            frame, length = Frame.parse_frame_header(memoryview(header))
        except Exception:       # a stream-id rule broken: this is not a frame header
            return self._bad_header(i)
        kind = header[3]
        limit = self.max_frame_size
        if not self.settings_known and kind <= CONTINUATION and _MAY_BE_LONG[kind]:
            limit = LARGEST_FRAME
        if length > limit:
            return self._bad_header(i)
        self._frame_ts = self._buffer_ts if i < self._old_len else self._ts
        if self._block is not None and kind != CONTINUATION:
            # RFC 9113 section 6.10: nothing may interleave a header block.
            self._block_broken(F_PARSE_ERROR)
        self._frame = frame
        self._kind = kind
        self._stream = frame.stream_id
        self._length = length
        if kind == DATA:
            self._end_stream = bool(header[4] & 0x01)
            if header[4] & 0x08:
                if length == 0:
                    self._frame_error(F_PARSE_ERROR)
                    self.state = S_HEADER
                else:
                    self.state = S_PAD_LENGTH
            else:
                self._padding = 0
                self._remaining = length
                if length:
                    self.state = S_DATA
                else:
                    self._data_done()
        elif kind > CONTINUATION or kind in (PRIORITY, PING, WINDOW_UPDATE):
            # Nothing an observer needs (flow control, liveness, priorities, extensions).
            self._remaining = length
            self._skip_bits = 0
            self.state = S_SKIP if length else S_HEADER
        else:
            self.state = S_PAYLOAD
        return i + 9

    def _bad_header(self, i: int) -> int:
        self.stats["parse_errors"] += 1
        self._lose_framing(F_PARSE_ERROR)
        return i + 1      # look for frames from the next byte on

    def _on_payload(self, view, i: int) -> int:
        length = self._length
        if len(view) - i < length:
            return ~i
        body = bytes(view[i:i + length])
        frame = self._frame
        kind = self._kind
        self.state = S_HEADER
        try:
            frame.parse_body(memoryview(body))
        except Exception:       # hyperframe's InvalidFrameError, InvalidPaddingError, InvalidDataError...
            self._frame_error(F_PARSE_ERROR)
            return i + length
        if kind == HEADERS:
            self._start_block(HEADERS, frame.stream_id, frame.data, "END_STREAM" in frame.flags,
                              "END_HEADERS" in frame.flags, 0)
        elif kind == CONTINUATION:
            if self._block is None or frame.stream_id != self._block_stream:
                # A fragment of a block whose start we do not have: it may change the table.
                self.stats["parse_errors"] += 1
                self.decoder.lose_state()
                self.sink.h2_stream_damaged(self, frame.stream_id, F_PARSE_ERROR | F_HPACK_INCOMPLETE)
            else:
                self._add_fragment(frame.data)
                if "END_HEADERS" in frame.flags:
                    self._finish_block()
        elif kind == PUSH_PROMISE:
            self._start_block(PUSH_PROMISE, frame.stream_id, frame.data, False, "END_HEADERS" in frame.flags,
                              frame.promised_stream_id & 0x7FFFFFFF)
        elif kind == RST_STREAM:
            self.sink.h2_reset(self, frame.stream_id, frame.error_code)
        elif kind == SETTINGS:
            if "ACK" not in frame.flags and frame.settings:
                self.sink.h2_settings(self, dict(frame.settings))
        elif kind == GOAWAY:
            self.sink.h2_goaway(self, frame.last_stream_id & 0x7FFFFFFF, frame.error_code)
        return i + length

    def _on_pad_length(self, view, i: int) -> int:
        padding = view[i]
        content = self._length - 1 - padding
        if content < 0:     # padding longer than the frame: a protocol error; skip the frame
            self._frame_error(F_PARSE_ERROR)
            self._remaining = self._length - 1
            self.state = S_SKIP if self._remaining else S_HEADER
            return i + 1
        self._padding = padding
        self._remaining = content
        if content:
            self.state = S_DATA
        else:
            self._data_content_done()
        return i + 1

    def _on_data(self, view, i: int) -> int:
        stop = min(len(view), i + self._remaining)
        self._remaining -= stop - i
        self.sink.h2_data(self, self._stream, view, i, stop)
        if not self._remaining:
            self._data_content_done()
        return stop

    def _on_padding(self, view, i: int) -> int:
        stop = min(len(view), i + self._padding)
        self._padding -= stop - i
        if not self._padding:
            self._data_done()
        return stop

    def _on_skip(self, view, i: int) -> int:
        stop = min(len(view), i + self._remaining)
        self._remaining -= stop - i
        if not self._remaining:
            self.state = S_HEADER
        return stop

    def _on_sync(self, view, i: int) -> int:
        n = len(view)
        size = self.max_frame_size
        pattern = _candidate_pattern(size)
        starts = [start for start in self._sync_starts if start >= i]
        if self._old_len >= i and self._old_len not in starts:
            starts.append(self._old_len)
        at = i
        while True:
            match = pattern.search(view, at)
            if match is None:
                keep = max(i, n - 8)    # a header may straddle into the next event
                break
            found = match.start()
            verdict = chain_verdict(view, found, n, size, found in starts)
            if verdict == ACCEPT:
                self.stats["skipped_bytes"] += found - i
                self.state = S_HEADER
                self._sync_starts = []
                return found
            if verdict == MORE:
                keep = found
                break
            at = found + 1
        self.stats["skipped_bytes"] += keep - i
        self._sync_starts = [start - keep for start in starts[-16:] if start >= keep]
        return ~keep

    def _on_closed(self, view, i: int) -> int:
        return len(view)

    # -- frames ------------------------------------------------------------------------------------

    def _data_content_done(self) -> None:
        if self._padding:
            self.state = S_PADDING
        else:
            self._data_done()

    def _data_done(self) -> None:
        self.state = S_HEADER
        if self._end_stream:
            self.sink.h2_end_stream(self, self._stream)

    def _frame_error(self, bits: int) -> None:
        """A frame whose header was fine but whose content is not: skip it, flag its stream."""
        self.stats["parse_errors"] += 1
        if self._kind in (HEADERS, PUSH_PROMISE, CONTINUATION):
            self.decoder.lose_state()
            if self._block is not None:
                self._block_broken(bits)
            bits |= F_HPACK_INCOMPLETE
        if self._stream:
            self.sink.h2_stream_damaged(self, self._stream, bits)

    def _frame_lost(self, bits: int) -> None:
        """Some of the current frame's payload is missing: what it said is lost with it."""
        if self._kind in (HEADERS, PUSH_PROMISE, CONTINUATION):
            self.decoder.lose_state()
            if self._block is not None:
                self._block_broken(bits)
            bits |= F_HPACK_INCOMPLETE
        if self._stream:
            self.sink.h2_stream_damaged(self, self._stream, bits)

    # -- header blocks -----------------------------------------------------------------------------

    def _start_block(self, kind: int, stream: int, fragment: bytes, end_stream: bool, end_headers: bool,
                     promised: int) -> None:
        self._block = []
        self._block_kind = kind
        self._block_stream = stream
        self._block_end_stream = end_stream
        self._block_promised = promised
        self._block_size = 0
        self._block_ts = self._frame_ts
        self._block_too_large = False
        self._add_fragment(fragment)
        if end_headers:
            self._finish_block()

    def _add_fragment(self, fragment: bytes) -> None:
        if self._block_too_large:
            return
        self._block_size += len(fragment)
        if self._block_size > self.max_header_block:
            self._block_too_large = True      # still joined to the end, never decoded
            self._block = []
            self._block_size = 0
        else:
            self._block.append(fragment)

    def _finish_block(self) -> None:
        parts = self._block
        self._block = None
        self._block_size = 0
        bits = 0
        fields = None
        if self._block_too_large:
            self.stats["parse_errors"] += 1
            self.decoder.lose_state()
            bits = F_PARSE_ERROR | F_HPACK_INCOMPLETE
        else:
            try:
                decoded = self.decoder.decode(parts[0] if len(parts) == 1 else b"".join(parts))
            except Exception:   # hpack's HPACKDecodingError, or anything garbage makes it raise
                self.stats["parse_errors"] += 1
                self.decoder.lose_state()
                bits = F_PARSE_ERROR | F_HPACK_INCOMPLETE
            else:
                fields = []
                unknown = 0
                for name, value in decoded:
                    if name == UNKNOWN or value == UNKNOWN:
                        unknown += 1
                    else:
                        fields.append((name.decode("latin-1"), value.decode("latin-1")))
                if unknown:
                    self.stats["hpack_unknown_fields"] += unknown
                    bits = F_HPACK_INCOMPLETE
        if self._block_kind == HEADERS:
            self.sink.h2_headers(self, self._block_stream, fields, self._block_end_stream, bits, self._block_ts)
        else:
            self.sink.h2_push_promise(self, self._block_stream, self._block_promised, fields, bits, self._block_ts)

    def _block_broken(self, bits: int) -> None:
        """The block being joined will never be whole: its stream lost those headers."""
        stream = self._block_stream
        self._block = None
        self._block_size = 0
        self.decoder.lose_state()
        self.sink.h2_stream_damaged(self, stream, bits | F_HPACK_INCOMPLETE)

    # -- losing and ending -------------------------------------------------------------------------

    def _lose_framing(self, bits: int) -> None:
        """We no longer know where frames begin: whatever went by may have been anything."""
        if self.state == S_SYNC:
            return      # still looking: nothing more was known to lose
        self.stats["framing_lost"] += 1
        if self._block is not None:
            self._block_broken(bits)
        self.decoder.lose_state()
        self.state = S_SYNC
        self.sink.h2_framing_lost(self, bits)

    def _close(self, ts_ns: int) -> None:
        self._ts = ts_ns
        self.stats["skipped_bytes"] += len(self.buffer)
        self.buffer = bytearray()
        self._block = None
        self._block_size = 0
        self.state = S_CLOSED


_HANDLERS = (FrameReader._on_preface, FrameReader._on_header, FrameReader._on_payload, FrameReader._on_data,
             FrameReader._on_pad_length, FrameReader._on_padding, FrameReader._on_skip, FrameReader._on_sync,
             FrameReader._on_closed)
