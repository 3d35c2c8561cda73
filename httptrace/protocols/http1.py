"""Stage 2 of reassembly: HTTP/1.x message framing for one direction of a connection, sans I/O.

A `MessageReader` is fed what one side sent, in stream order, as it arrives:

    reader.receive_data(data, ts_ns)          # bytes that follow what came before
    reader.receive_missing(n, ts_ns, cause)   # n bytes were sent but we do not have them
    reader.receive_eof(ts_ns)                 # the connection closed (ends close-delimited bodies)
    reader.abort(ts_ns)                       # we stop watching (idle expiry, tracer exit)

and reports what it finds to a `sink` (the session, in sessions.py):

    sink.kind_decided(reader)                 # an EITHER reader saw its first start line
    sink.message_started(reader, builder)     # start line and headers parsed, body to come;
                                              #   for a final response, returns the method of the
                                              #   request it answers (HEAD and CONNECT change framing)
    sink.message_finished(reader, builder)    # body done (or the message was cut short; see flags);
                                              #   may return PAUSED or OPAQUE as the reader's next state
    sink.message_lost(reader, flag_bits)      # a message began here, but not even its head survived

The reader is a state machine; `_HANDLERS` maps each state to the function that consumes bytes in it.
Each handler takes (view, i) and returns the index it consumed up to, or `~index` when it needs more
bytes first.  Unconsumed bytes wait in `buffer` (a bytearray); when nothing waits, handlers read the
caller's bytes directly, so a message that arrives whole is parsed without copying it first.

Damage control: malformed bytes, or bytes missing where framing is needed (a gap or a capture cut
inside the headers or a chunk-size line), end the current message and put the reader in SYNC,
which skips to the next line that looks like a start line.  Missing bytes inside a body whose
length is known are just counted: the message goes on, flagged.
"""
from __future__ import annotations

import gzip
import re
import zlib
from typing import TYPE_CHECKING, Any, Protocol, Union

from ..exchange import (F_GAP, F_INCOMPLETE, F_MID_STREAM, F_NOT_VISIBLE, F_PARSE_ERROR,  # noqa: F401 (re-exported)
                       F_TRUNCATED, F_UPGRADED, Message, flags_of, header_value)

if TYPE_CHECKING:
    from .h1pairing import _Pending
    from .interface import DirectionReader

# What readers read: the caller's bytes, or their own buffer of what waited.
Bytes = Union[bytes, bytearray]

# What a reader expects to see.
REQUEST = 1
RESPONSE = 2
EITHER = 3   # the role is not known yet: the first start line decides

# Why bytes are missing (receive_missing).
TRUNCATED = 1     # the kernel did not copy them (per-syscall capture cap)
NOT_VISIBLE = 2   # sendfile(): they went from a file to the socket without passing user memory
LOST = 3          # a gap: their events were lost

# Flag bits on a message being read (defined with the Flag set they map to).
_BIT_OF_CAUSE = {TRUNCATED: F_TRUNCATED, NOT_VISIBLE: F_NOT_VISIBLE, LOST: F_GAP}


# Reader states.
SYNC = 0          # lost our place: skipping to the next start line
HEAD = 1          # reading a start line and header block
BODY = 2          # Content-Length body: `remaining` bytes to go
CHUNK_SIZE = 3    # chunked: expecting a chunk-size line
CHUNK_DATA = 4    # chunked: `remaining` bytes of chunk data to go
CHUNK_END = 5     # chunked: expecting the CRLF after chunk data
TRAILERS = 6      # chunked: trailer fields after the last chunk
UNTIL_CLOSE = 7   # response body delimited by the connection closing
OPAQUE = 8        # after an upgrade / CONNECT: not HTTP any more, bytes are counted and dropped
PAUSED = 9        # after a request that may switch protocols: waiting for its response to tell
CLOSED = 10       # after EOF or abort: nothing more to read
STATE_NAMES = ("SYNC", "HEAD", "BODY", "CHUNK_SIZE", "CHUNK_DATA", "CHUNK_END", "TRAILERS",
               "UNTIL_CLOSE", "OPAQUE", "PAUSED", "CLOSED")

# How a message's body is delimited (RFC 9112 section 6.3).
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_EOF = 3
SWITCH = 4        # 101, or 2xx to CONNECT: the connection stops being HTTP after the head

DEFAULT_MAX_HEADER = 64 * 1024

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = _TOKEN + rb" [^\x00-\x20\x7f]+ HTTP/1\.[0-9]\r?\n"
_STATUS_LINE = rb"HTTP/1\.[0-9] [0-9]{3}(?:[ \t][^\r\n]*)?\r?\n"
_START_LINE = {REQUEST: _REQUEST_LINE, RESPONSE: _STATUS_LINE,
               EITHER: rb"(?:" + _REQUEST_LINE + rb"|" + _STATUS_LINE + rb")"}
# Resync looks for a whole start line either right here or just after a newline.
_START_HERE = {kind: re.compile(line) for kind, line in _START_LINE.items()}
_START_AFTER_NEWLINE = {kind: re.compile(rb"\n(?=" + line + rb")") for kind, line in _START_LINE.items()}
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_COMMON_START = re.compile(rb"(?:HTTP/1\.|(?:GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) )")


class MalformedHead(ValueError):
    """A start line or header block we cannot read; `start_line_ok` if it at least began like HTTP."""

    def __init__(self, reason: str, start_line_ok: bool = False):
        super().__init__(reason)
        self.start_line_ok = start_line_ok


class MessageBuilder:
    """A message being read: head parsed, body arriving.  Class attributes are the defaults, so a
    new builder costs one empty instance (this is on the per-message hot path)."""

    is_request = True
    version = "HTTP/1.1"
    method: str | None = None
    target: str | None = None
    status: int | None = None
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    trailers: tuple[tuple[str, str], ...] = ()
    content_length: int | None = None
    transfer_encoding = False     # a Transfer-Encoding header was present
    chunked = False               # ... and its final coding is chunked
    upgrade = False               # an Upgrade header was present
    kept = 0                      # body bytes held in `parts`
    size = 0                      # body bytes seen or known to be sent (kept, cut or missing)
    capture_left = 0              # how many more body bytes we may keep
    truncated = False             # the body we keep is not the whole body
    flags = 0                     # F_* bits
    first_ts = 0
    last_ts = 0
    done = False                  # the reader is finished with it
    broken = False                # it ended early because framing was lost (gap, parse error)
    cut_off = False               # it ended early because the connection closed or we stopped watching
    orphan = False                # a response that answers no request we saw
    entry: _Pending | None = None  # the session's pairing record

    def __init__(self) -> None:
        self.parts: list[Bytes] = []

    def add_body(self, view: Bytes, start: int, stop: int) -> None:
        """Body bytes view[start:stop]: all counted, kept up to the capture limit."""
        count = stop - start
        self.size += count
        left = self.capture_left
        if left >= count:
            self.parts.append(view[start:stop])
            self.kept += count
            self.capture_left = left - count
        else:
            if left > 0:
                self.parts.append(view[start:start + left])
                self.kept += left
                self.capture_left = 0
            self.truncated = True
            self.flags |= F_TRUNCATED

    def add_missing(self, count: int, bit: int) -> None:
        """`count` body bytes were sent but we do not have them."""
        self.size += count
        self.truncated = True
        self.flags |= bit

    def cut(self) -> int:
        """Drop the kept body (memory pressure) and keep no more; returns the bytes freed."""
        freed = self.kept
        self.parts = []
        self.kept = 0
        self.capture_left = 0
        if self.size:
            self.truncated = True
            self.flags |= F_TRUNCATED
        return freed

    def build(self) -> Message:
        parts = self.parts
        if len(parts) == 1 and type(parts[0]) is bytes:
            body = parts[0]
        else:
            body = b"".join(parts)
        return Message(self.version, self.headers, body, self.size, self.truncated or self.kept < self.size,
                       self.first_ts, self.last_ts, self.method, self.target, self.status, self.reason,
                       self.trailers)

    def header(self, name: str) -> str | None:
        return header_value(self.headers, name)

    def __repr__(self) -> str:
        line = f"{self.method} {self.target}" if self.is_request else f"{self.status} {self.reason}"
        return f"<MessageBuilder {line} size={self.size} kept={self.kept} flags={self.flags}>"


# -- head parsing (pure functions) ----------------------------------------------------------------

_REQUEST_LINE_TEXT = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^\x00-\x20\x7f]+) (HTTP/1\.[0-9])")
_STATUS_LINE_TEXT = re.compile(r"(HTTP/1\.[0-9]) ([0-9]{3})(?:[ \t](.*))?", re.S)
# One header field per CRLF-terminated line: the common case, in one C-speed findall.  parse_head
# checks it matched every line (a lone CR, a bare LF or an obs-fold line makes it miss one) and
# that no value has whitespace to trim at its end; anything unusual goes to parse_fields.
_FIELD_LINE = re.compile(r"^([^ \t\r\n:]+):[ \t]*([^\r\n]*)(?:\r\n|\Z)", re.M)


def parse_start_line(line: str, kind: int, builder: MessageBuilder | None = None) -> MessageBuilder:
    """Fill `builder` (or a new one) from a request or status line; raise MalformedHead."""
    b = builder if builder is not None else MessageBuilder()
    if line.startswith("HTTP/"):
        if kind == REQUEST:
            raise MalformedHead("status line where a request line was expected")
        match = _STATUS_LINE_TEXT.fullmatch(line)
        if match is None:
            raise MalformedHead(f"bad status line {line[:80]!r}")
        b.is_request = False
        b.version, status, reason = match.groups()
        b.status = int(status)
        b.reason = reason or ""
        return b
    if kind == RESPONSE:
        raise MalformedHead("request line where a status line was expected")
    match = _REQUEST_LINE_TEXT.fullmatch(line)
    if match is None:
        raise MalformedHead(f"bad request line {line[:80]!r}")
    b.method, b.target, b.version = match.groups()
    return b


def split_lines(text: str) -> list[str]:
    """Lines of a head; CRLF is the norm but a bare LF is tolerated (RFC 9112 section 2.2)."""
    lines = text.split("\r\n")
    if text.count("\n") != len(lines) - 1:
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    return lines


def parse_fields(lines: list[str], first: int = 0) -> list[tuple[str, str]]:
    """Header (or trailer) fields in wire order, repeats kept, obs-fold joined with one space."""
    fields: list[tuple[str, str]] = []
    for index in range(first, len(lines)):
        line = lines[index]
        if not line:
            raise MalformedHead("empty line inside a header block", True)
        if line[0] == " " or line[0] == "\t":       # obs-fold: continues the previous field's value
            if not fields:
                raise MalformedHead("continuation line before any header field", True)
            name, value = fields[-1]
            more = line.strip(" \t")
            fields[-1] = (name, f"{value} {more}" if value and more else value or more)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            raise MalformedHead(f"bad header line {line[:80]!r}", True)
        fields.append((name, value.strip(" \t")))
    return fields


# Lines of heads read before, and what they said.  A sender repeats its start lines and most of its
# header lines message after message (Host, User-Agent, Server, Content-Type...), so a head whose
# every line was seen before is read with a few dict lookups, in C (map), instead of regular
# expressions that cost more than the rest of the message.  Filled by _scan_head from heads read
# with its plain-fields branch only, where each line's result depends on that line alone; cleared
# when full, since the lines are chosen by whoever sends the traffic.  Credentials are not kept
# (those header lines, and request lines with a query).
_START_OF_LINE: dict[str, tuple[Any, ...]] = {}     # start line -> (True, method, target, version)
                                                    #            or (False, version, status, reason)
_FIELD_OF_LINE: dict[str, tuple[str, str]] = {}     # "Name: value" -> (name, value)
_FRAMING_OF_LINE: dict[str, tuple[str, str]] = {}   # those of them that frame a body -> (lowered name, value),
                                                    #   or ("length", value, its int) for a plain Content-Length
_LINE_CACHE_LIMIT = 4096
_CACHED_LINE_MAX = 256     # longer lines are not kept: the caches stay within a few MiB
_FRAMING_NAMES = frozenset(("content-length", "transfer-encoding", "upgrade"))
_UNCACHED_NAMES = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie"))


def parse_head(text: str, kind: int) -> MessageBuilder:
    """A MessageBuilder from a whole head (start line + fields, no final empty line, latin-1 text)."""
    lines = text.split("\r\n")
    start = _START_OF_LINE.get(lines[0])
    if start is None or (kind == REQUEST) != start[0] and kind != EITHER:
        return _scan_head(text, kind)
    del lines[0]
    fields = [*map(_FIELD_OF_LINE.get, lines)]
    if None in fields:
        return _scan_head(text, kind)
    b = MessageBuilder()
    if start[0]:
        _, b.method, b.target, b.version = start
    else:
        b.is_request = False
        _, b.version, b.status, b.reason = start
    b.headers = tuple(fields)     # type: ignore[arg-type]  # no None in it
    framing = [*filter(None, map(_FRAMING_OF_LINE.get, lines))]
    if framing:
        if len(framing) == 1 and framing[0][0] == "length":    # one plain Content-Length: the usual case
            b.content_length = framing[0][2]  # type: ignore[misc]  # ("length", value, its int)
        else:
            _frame_by_fields(b, framing)
    return b


def _frame_by_fields(b: MessageBuilder, framing: list[tuple[str, str]]) -> None:
    """Set b's framing facts from its (lowered name, value) framing fields, in wire order."""
    lengths, codings = [], []
    for field in framing:
        name, value = field[0], field[1]
        if name == "content-length" or name == "length":
            lengths.append(value)
        elif name == "transfer-encoding":
            codings.append(value)
        else:
            b.upgrade = True
    if codings:
        listed = [coding.strip().lower() for coding in ",".join(codings).split(",") if coding.strip()]
        if listed:
            b.transfer_encoding = True
            b.chunked = listed[-1] == "chunked"
    if lengths:
        b.content_length = parse_content_length(",".join(lengths))


def _remember_lines(text: str, fields_at: int, b: MessageBuilder, fields: list[tuple[str, str]]) -> None:
    """For parse_head: the start line and field lines of a head just read by _scan_head's
    plain-fields branch (every line CRLF-terminated, one field each, no tab, no trailing space)."""
    line = text[:fields_at - 2]
    if not b.is_request:
        start: tuple[Any, ...] | None = (False, b.version, b.status, b.reason)
    else:
        start = None if "?" in line else (True, b.method, b.target, b.version)
    if start is not None and len(line) <= _CACHED_LINE_MAX:
        if len(_START_OF_LINE) >= _LINE_CACHE_LIMIT:
            _START_OF_LINE.clear()
        _START_OF_LINE[line] = start
    if len(_FIELD_OF_LINE) + len(fields) > _LINE_CACHE_LIMIT:
        _FIELD_OF_LINE.clear()
        _FRAMING_OF_LINE.clear()
    for line_text, field in zip(text[fields_at:].split("\r\n"), fields):
        name = field[0].lower()
        if name in _UNCACHED_NAMES or len(line_text) > _CACHED_LINE_MAX:
            continue
        _FIELD_OF_LINE[line_text] = field
        if name in _FRAMING_NAMES:
            value = field[1]
            # ("length", value, its int) for a plain one, so that parse_head need not parse it again
            _FRAMING_OF_LINE[line_text] = (("length", value, int(value))  # type: ignore[assignment]
                                           if name == "content-length" and value.isdigit() and value.isascii()
                                           else (name, value))


def _scan_head(text: str, kind: int) -> MessageBuilder:
    """parse_head for a head with a line not seen before (or an unusual one): regular expressions."""
    newline = text.find("\n")
    if newline < 0:
        return parse_start_line(text, kind)
    b = parse_start_line(text[:newline - 1] if newline and text[newline - 1] == "\r" else text[:newline], kind)
    fields_at = newline + 1
    fields = _FIELD_LINE.findall(text, fields_at)
    if len(fields) == text.count("\n", fields_at) + 1 and " \r" not in text and "\t" not in text and text[-1] != " ":
        b.headers = tuple(fields)
        if newline and text[newline - 1] == "\r":
            _remember_lines(text, fields_at, b, fields)
        # Only the fields that frame the body, found in one pass over the lowered text.
        framing = _FRAMING_FIELD.findall(text.lower(), newline)
    else:
        b.headers = tuple(parse_fields(split_lines(text[fields_at:])))
        framing = [(lname, value) for name, value in b.headers if (lname := name.lower()) in _FRAMING_NAMES]
    if framing:
        _frame_by_fields(b, framing)
    return b


# In a head whose lines are all plain "name: value" fields (checked by parse_head), lowered.
_FRAMING_FIELD = re.compile(r"\n(content-length|transfer-encoding|upgrade):[ ]*([^\r]*)")


def parse_content_length(value: str) -> int:
    """Content-Length; a list of identical values ("5, 5") is accepted, anything else raises."""
    if value.isdigit() and value.isascii():
        return int(value)
    values = {item.strip() for item in value.split(",")}
    if len(values) != 1:
        raise MalformedHead(f"conflicting Content-Length {value[:80]!r}", True)
    only = values.pop()
    if not (only.isdigit() and only.isascii()):
        raise MalformedHead(f"bad Content-Length {value[:80]!r}", True)
    return int(only)


def request_framing(b: MessageBuilder) -> int:
    if b.transfer_encoding:
        if not b.chunked:   # a request body cannot be close-delimited: the server must refuse it
            raise MalformedHead("request Transfer-Encoding does not end with chunked", True)
        return CHUNKED
    if b.content_length:
        return LENGTH
    return NO_BODY


def response_framing(b: MessageBuilder, request_method: str | None) -> int:
    status: int = b.status  # type: ignore[assignment]  # a response's
    if status == 101 or (request_method == "CONNECT" and 200 <= status < 300):
        return SWITCH
    if request_method == "HEAD" or status == 204 or status == 304 or status < 200:
        return NO_BODY
    if b.transfer_encoding:
        return CHUNKED if b.chunked else UNTIL_EOF
    if b.content_length is not None:
        return LENGTH if b.content_length else NO_BODY
    return UNTIL_EOF


def switches_protocol(request_method: str | None, status: int | None) -> bool:
    """Whether a final response with `status` to `request_method` ends HTTP on the connection."""
    return status == 101 or (request_method == "CONNECT" and status is not None and 200 <= status < 300)


def parse_chunk_size(line: Bytes) -> int:
    """The size on a chunk-size line (extensions ignored); -1 when it is not one."""
    semicolon = line.find(b";")
    digits = (line if semicolon < 0 else line[:semicolon]).strip(b" \t\r")
    if _CHUNK_SIZE.fullmatch(digits) is None:
        return -1
    return int(digits, 16)


# -- the reader -----------------------------------------------------------------------------------

class Sink(Protocol):
    """What a MessageReader reports to (see the module docstring)."""

    def kind_decided(self, reader: MessageReader) -> None: ...
    def message_started(self, reader: MessageReader, builder: MessageBuilder) -> str | None: ...
    def message_finished(self, reader: MessageReader, builder: MessageBuilder) -> int | None: ...
    def message_lost(self, reader: MessageReader, bits: int) -> None: ...


class NullSink:
    """A sink that records nothing: handy for benchmarks and for using a reader on its own."""

    def kind_decided(self, reader: MessageReader) -> None:
        return None

    def message_started(self, reader: MessageReader, builder: MessageBuilder) -> str | None:
        return None

    def message_finished(self, reader: MessageReader, builder: MessageBuilder) -> int | None:
        return None

    def message_lost(self, reader: MessageReader, bits: int) -> None:
        return None


class MessageReader:
    """Incremental HTTP/1.x framing of the messages one side sends.  Never raises on bad input."""

    whole_messages = True   # receive_data's fast path (_read_whole); False: the state machine alone (tests)

    def __init__(self, kind: int, sink: Sink, *, max_body: int = 1 << 20, max_header: int = DEFAULT_MAX_HEADER,
                 mid_stream: bool = False, stats: dict[str, int] | None = None):
        self.kind = kind
        self.sink = sink
        self.max_body = max_body
        self.max_header = max_header
        self.stats = stats if stats is not None else {}
        for key in ("parse_errors", "skipped_bytes", "framing_lost", "interim_responses", "opaque_bytes"):
            self.stats.setdefault(key, 0)
        self.buffer = bytearray()      # bytes received but not consumed yet
        self.deferred: list[tuple[Any, ...]] = []  # calls received while PAUSED, replayed by resume()
        self.deferred_bytes = 0
        self.message: MessageBuilder | None = None
        self.state = SYNC if mid_stream else HEAD
        # Once a valid start line has been seen, bytes we cannot read are parse errors; before that
        # (a connection caught mid-stream, or one that is not HTTP at all) they are just skipped.
        self.synced = False
        self._at_start = not mid_stream   # nothing received yet, and a message begins at the first byte
        self._buffer_ts = 0     # ts of the event that brought buffer[0]
        self._old_len = 0       # in the current call, view[:_old_len] came from earlier events
        self._ts = 0            # ts of the current event
        self._remaining = 0     # BODY / CHUNK_DATA: bytes still to come
        self._scan = 0          # HEAD / TRAILERS: bytes of the block already searched for its end
        self._first_line_ok = False   # HEAD: start line already validated while waiting for the rest
        self._line_start = True       # SYNC: the next byte begins a line
        self._next_flags = 0          # flags for the next message (bytes were skipped before it)
        # OPAQUE: a reader to pass the bytes to instead of dropping them (h2c: the HTTP/2 reader).
        self.divert: DirectionReader | None = None

    def __repr__(self) -> str:
        return f"<MessageReader kind={self.kind} state={STATE_NAMES[self.state]} buffered={len(self.buffer)}>"

    # -- input -------------------------------------------------------------------------------------

    def receive_data(self, data: Bytes, ts_ns: int) -> None:
        """Bytes that follow, in the stream, whatever was received before."""
        if not data:
            return
        state = self.state
        self._ts = ts_ns
        if state == BODY and not self.buffer and len(data) < self._remaining:
            # The bulk of a large body: straight into the message, no buffering, no loop.
            self.message.add_body(data, 0, len(data))  # type: ignore[union-attr]  # set in this state
            self.message.last_ts = ts_ns  # type: ignore[union-attr]
            self._remaining -= len(data)
            return
        if state >= OPAQUE:
            if state == PAUSED:
                self.deferred.append((self.receive_data, data, ts_ns))
                self.deferred_bytes += len(data)
            elif state == OPAQUE and self.divert is not None:
                self.divert.receive_data(data, ts_ns)
            else:
                self.stats["opaque_bytes"] += len(data)
            return
        if state == HEAD and not self.buffer and self.whole_messages and self.kind != EITHER:
            # The common case: the event begins with a whole head (see _read_whole).
            first = data[0]
            end = data.find(b"\n\r\n")
            if (0 < end <= self.max_header and first != 13 and first != 10
                    and data.find(b"\n\n", 0, end) < 0):
                try:
                    b = parse_head(data[:end - 1 if data[end - 1] == 13 else end].decode("latin-1"), self.kind)
                except MalformedHead:
                    pass    # the state machine reports it, as if there were no fast path
                else:
                    self._read_whole(data, b, end + 3)
                    return
        if state == SYNC and _START_HERE[self.kind].match(data) is not None:
            # Lost our place, and this event begins with a start line: an event begins a write, and a
            # message usually does too.  Whatever partial line we kept (the end of a body with no
            # newline, say) is not glued to it, or the message would be skipped with it (or read
            # with a method like "abcGET") - unless the two make a start line themselves and this
            # one does not begin with a common method ("G" then "ET / HTTP/1.1").
            if self.buffer and (_COMMON_START.match(data) is not None or not self._line_start
                                or _START_HERE[self.kind].match(bytes(self.buffer) + data) is None):
                self._skip(len(self.buffer))
                self.buffer = bytearray()
            self._line_start = True
        buffer = self.buffer
        view: Bytes
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
                self._buffer_ts = ts_ns    # whatever is left came with this event
            if consumed:
                del buffer[:consumed]
        elif consumed < len(data):
            self.buffer = bytearray(data[consumed:] if consumed else data)
            self._buffer_ts = ts_ns

    def receive_missing(self, count: int, ts_ns: int, cause: int) -> None:
        """`count` bytes that follow were sent but are not available (see TRUNCATED, NOT_VISIBLE, LOST)."""
        if count <= 0:
            return
        state = self.state
        self._ts = ts_ns
        if state >= OPAQUE:
            if state == PAUSED:
                self.deferred.append((self.receive_missing, count, ts_ns, cause))
            elif state == OPAQUE and self.divert is not None:
                self.divert.receive_missing(count, ts_ns, cause)
            return
        bit = _BIT_OF_CAUSE[cause]
        b: MessageBuilder = self.message  # type: ignore[assignment]  # set in the states that use it
        if state == BODY or state == CHUNK_DATA:
            take = count if count < self._remaining else self._remaining
            b.add_missing(take, bit)
            b.last_ts = ts_ns
            self._remaining -= take
            count -= take
            if self._remaining == 0:
                if state == BODY:
                    self._finish()
                else:
                    self.state = CHUNK_END
            if count:   # the rest fell where framing was due: handled by whatever state we are in now
                self.receive_missing(count, ts_ns, cause)
            return
        if state == UNTIL_CLOSE:
            b.add_missing(count, bit)
            b.last_ts = ts_ns
            return
        self._lose_framing(bit)

    def receive_eof(self, ts_ns: int) -> None:
        """The connection closed: a close-delimited body ends here; any other partial message is cut off."""
        self._end(ts_ns, eof=True)

    def abort(self, ts_ns: int) -> None:
        """We stop watching: whatever is partial is cut off, close-delimited bodies included."""
        self._end(ts_ns, eof=False)

    # -- control from the session ------------------------------------------------------------------

    def set_kind(self, kind: int) -> None:
        """The other direction told us what we carry."""
        self.kind = kind

    def resume(self) -> None:
        """The response to a would-be protocol switch did not switch: go on parsing what waited."""
        if self.state != PAUSED:
            return
        self.state = HEAD
        waiting, self.deferred, self.deferred_bytes = self.deferred, [], 0
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            self.receive_data(data, self._buffer_ts)
        for call, *args in waiting:
            call(*args)     # each call re-defers itself if the reader paused again

    def go_opaque(self) -> None:
        """The connection switched protocols: nothing more to parse in this direction (what is
        held goes to `divert`, if set)."""
        if self.message is not None:
            b = self.message
            b.cut_off = True
            self._finish(next_state=OPAQUE)
        held, waiting, waiting_bytes = self.buffer, self.deferred, self.deferred_bytes
        self.buffer = bytearray()
        self.deferred, self.deferred_bytes = [], 0
        self.state = OPAQUE
        if self.divert is None:
            self.stats["opaque_bytes"] += len(held) + waiting_bytes
            return
        if held:
            self.divert.receive_data(bytes(held), self._buffer_ts)
        for call, *args in waiting:
            call(*args)         # OPAQUE now: each goes to `divert`

    def discard_buffer(self) -> int:
        """Memory pressure: drop unparsed bytes and resync after them; returns the bytes dropped."""
        dropped = len(self.buffer) + self.deferred_bytes
        if dropped == 0:
            return 0
        if self.state == PAUSED:   # what waited for the upgrade decision is given up
            self.stats["skipped_bytes"] += dropped
            self.buffer = bytearray()
            self.deferred, self.deferred_bytes = [], 0
            self.state = SYNC
            self._line_start = True
            return dropped
        if self.synced:
            self.stats["parse_errors"] += 1
        self._lose_framing(F_PARSE_ERROR)   # counts the buffer as skipped
        return dropped

    @property
    def ts(self) -> int:
        """ts_ns of the event being read (or of the last one read)."""
        return self._ts

    def absorbs(self, count: int) -> bool:
        """Whether `count` bytes missing right now would fall inside the current message's body, so
        that no message can have begun (or ended and another begun) among them."""
        state = self.state
        if state == BODY or state == CHUNK_DATA:
            return count <= self._remaining
        return state == UNTIL_CLOSE or state == OPAQUE or state == CLOSED

    def buffered(self) -> int:
        """Bytes this reader holds: unparsed input plus the kept body of the current message."""
        b = self.message
        return len(self.buffer) + self.deferred_bytes + (b.kept if b is not None else 0)

    # -- the state machine -------------------------------------------------------------------------

    def _run(self, view: Bytes, i: int = 0) -> int:
        """Consume as much of `view[i:]` as the current state allows; returns the index consumed up to."""
        n = len(view)
        handlers = _HANDLERS
        while i < n:
            j = handlers[self.state](self, view, i)
            if j < 0:
                return ~j
            i = j
        return i

    def _on_sync(self, view: Bytes, i: int) -> int:
        kind = self.kind
        n = len(view)
        found = -1
        if self._line_start and _START_HERE[kind].match(view, i) is not None:
            found = i
        else:
            match = _START_AFTER_NEWLINE[kind].search(view, i)
            if match is not None:
                found = match.end()
        if found >= 0:
            self._skip(found - i)
            self.synced = True
            self.state = HEAD
            self._scan = 0
            self._first_line_ok = False
            return found
        # No start line yet.  The last, unfinished line may still become one: keep it (bounded).
        newline = view.rfind(b"\n", i)
        if newline >= 0:
            keep = newline + 1
            self._line_start = True
        else:
            keep = i if self._line_start else n   # the middle of a line can never become a start line
        if n - keep > self.max_header:
            keep = n
            self._line_start = False
        self._skip(keep - i)
        return ~keep

    def _skip(self, count: int) -> None:
        # Not a parse error by itself: after a gap, skipped bytes are the rest of a lost message.
        # The malformed input that sent us here flagged the next message already.
        self.stats["skipped_bytes"] += count

    def _on_head(self, view: Bytes, i: int) -> int:
        c = view[i]
        if c == 13 or c == 10:             # empty lines between messages are tolerated
            n = len(view)
            while i < n and (view[i] == 13 or view[i] == 10):
                i += 1
            return i
        scan = self._scan
        start = i + scan - 3 if scan > 3 else i
        end = view.find(b"\n\r\n", start)
        if end >= 0:
            bare = view.find(b"\n\n", start, end)
            if bare >= 0:
                end, after = bare, bare + 2
            else:
                after = end + 3
        else:
            end = view.find(b"\n\n", start)
            if end < 0:
                return self._head_incomplete(view, i, start)
            after = end + 2
        self._scan = 0
        if end - i > self.max_header:
            return self._fail_head(view, i, MalformedHead("header block too large", self._starts_well(view, i)))
        try:
            b = parse_head(view[i:end - 1 if view[end - 1] == 13 else end].decode("latin-1"), self.kind)
        except MalformedHead as error:
            return self._fail_head(view, i, error)
        return self._head_read(view, i, after, b)

    def _head_read(self, view: Bytes, i: int, after: int, b: MessageBuilder) -> int:
        """The head at view[i:after] parsed as `b`: start the message (or skip an interim response)."""
        self._first_line_ok = False
        self._synced_on(b.is_request)
        b.first_ts = self._buffer_ts if i < self._old_len else self._ts
        b.last_ts = self._ts
        if self._next_flags:
            b.flags = self._next_flags
            self._next_flags = 0
        if b.is_request:
            try:
                framing = request_framing(b)
            except MalformedHead as error:
                return self._fail_head(view, i, error)
            self.message = b
            b.capture_left = self.max_body
            self.sink.message_started(self, b)
            self._frame_body(b, framing)
            return after
        if b.status < 200 and b.status != 101:  # type: ignore[operator]  # a response's; interim (100 Continue, 103...): not the answer yet
            self.stats["interim_responses"] += 1
            self._next_flags = b.flags
            return after
        return self._start_response(b, after)

    def _start_response(self, b: MessageBuilder, after: int) -> int:
        method = self.sink.message_started(self, b)
        framing = response_framing(b, method)
        self.message = b
        b.capture_left = 0 if b.orphan else self.max_body
        if framing == SWITCH:
            b.flags |= F_UPGRADED
            self._finish(next_state=OPAQUE)
        else:
            self._frame_body(b, framing)
        return after

    def _read_whole(self, data: Bytes, b: MessageBuilder, after: int) -> None:
        """receive_data's fast path: `data` begins with a whole head, parsed as `b` (state HEAD,
        nothing buffered, kind known).  The usual messages (a request without Transfer-Encoding,
        a final response framed by Content-Length) are started and, when their body is here,
        finished in a few steps; anything else goes through _head_read.  Whatever follows the
        message goes to the state machine.  The steps, and their order, are the state machine's:
        tests/unit/test_http1_fast_path.py compares the two."""
        self._old_len = 0
        n = len(data)
        ts = self._ts
        if b.transfer_encoding or not (b.is_request or (b.content_length is not None and b.status >= 200  # type: ignore[operator]  # a response's
                                                          and b.status != 204 and b.status != 304)):
            i = self._head_read(data, 0, after, b)
        else:
            self._first_line_ok = False
            self.synced = True      # (_synced_on: the kind is known)
            b.first_ts = b.last_ts = ts
            if self._next_flags:
                b.flags = self._next_flags
                self._next_flags = 0
            if b.is_request:
                self.message = b
                b.capture_left = self.max_body
                self.sink.message_started(self, b)
                method = None
            else:
                method = self.sink.message_started(self, b)
                self.message = b
                b.capture_left = 0 if b.orphan else self.max_body
            length: int = b.content_length  # type: ignore[assignment]  # None only for requests: no body
            i = after
            if method == "HEAD" or method == "CONNECT":     # they change a response's framing
                framing = response_framing(b, method)
                if framing == SWITCH:
                    b.flags |= F_UPGRADED
                    self._finish(next_state=OPAQUE)
                else:
                    self._frame_body(b, framing)
            elif not length:
                self._finish()
            elif after + length <= n:
                i = after + length
                left = b.capture_left
                if left >= length:      # (add_body, inlined: a new builder, all of it kept)
                    b.parts.append(data[after:i])
                    b.size = b.kept = length
                    b.capture_left = left - length
                else:
                    b.add_body(data, after, i)
                self._finish()
            else:
                self.state = BODY
                self._remaining = length
        if i < n:
            i = self._run(data, i)
            if i < n:
                self.buffer = bytearray(data[i:] if i else data)
                self._buffer_ts = ts

    def _frame_body(self, b: MessageBuilder, framing: int) -> None:
        if framing == LENGTH:
            self.state = BODY
            self._remaining = b.content_length  # type: ignore[assignment]  # LENGTH: it has one
        elif framing == CHUNKED:
            self.state = CHUNK_SIZE
        elif framing == UNTIL_EOF:
            self.state = UNTIL_CLOSE
        else:
            self._finish()

    def _head_incomplete(self, view: Bytes, i: int, searched_from: int) -> int:
        n = len(view)
        if not self._first_line_ok:
            # Check the start line as soon as it is whole: garbage should not wait for 64 KiB.
            newline = view.find(b"\n", searched_from)
            if newline >= 0:
                line = view[i:newline].decode("latin-1")
                try:
                    start = parse_start_line(line[:-1] if line.endswith("\r") else line, self.kind)
                except MalformedHead as error:
                    return self._fail_head(view, i, error)
                self._first_line_ok = True
                self._synced_on(start.is_request)
        if n - i > self.max_header:
            return self._fail_head(view, i, MalformedHead("header block too large", self._starts_well(view, i)))
        self._scan = n - i
        return ~i

    def _starts_well(self, view: Bytes, i: int) -> bool:
        """Whether view[i:] begins with a whole, valid start line."""
        if self._first_line_ok:
            return True
        return _START_HERE[self.kind].match(view, i) is not None

    def _synced_on(self, is_request: bool) -> None:
        """A valid start line: we are in step with the stream, and (if it was open) know its kind."""
        self.synced = True
        if self.kind == EITHER:
            self.kind = REQUEST if is_request else RESPONSE
            self.sink.kind_decided(self)

    def _fail_head(self, view: Bytes, i: int, error: MalformedHead) -> int:
        """A head we cannot read: it is dropped, and we resync from the line after its first."""
        self._scan = 0
        self._first_line_ok = False
        newline = view.find(b"\n", i)
        resume = newline + 1 if newline >= 0 else len(view)
        self._line_start = newline >= 0
        if error.start_line_ok or self.synced:
            if error.start_line_ok and self.kind == EITHER:   # broken, but clearly one or the other
                self.kind = RESPONSE if view[i:i + 5] == b"HTTP/" else REQUEST
                self.sink.kind_decided(self)
            self.synced = True
            self.stats["parse_errors"] += 1
            self._next_flags |= F_PARSE_ERROR
            self.sink.message_lost(self, F_PARSE_ERROR)
        elif view[i:i + 16] == b"PRI * HTTP/2.0\r\n":
            self.state = OPAQUE     # HTTP/2 with prior knowledge: binary frames, nothing for us
            return len(view)
        self.stats["skipped_bytes"] += resume - i
        self.state = SYNC
        return resume

    def _take_counted(self, view: Bytes, i: int) -> tuple[int, bool]:
        """Body bytes of a known count (Content-Length or one chunk): take what is here; True once all are."""
        stop = i + self._remaining
        n = len(view)
        self.message.last_ts = self._ts  # type: ignore[union-attr]  # set in this state
        if stop <= n:
            self.message.add_body(view, i, stop)  # type: ignore[union-attr]
            return stop, True
        self.message.add_body(view, i, n)  # type: ignore[union-attr]
        self._remaining = stop - n
        return n, False

    def _on_body(self, view: Bytes, i: int) -> int:
        end, complete = self._take_counted(view, i)
        if complete:
            self._finish()
        return end

    def _on_chunk_size(self, view: Bytes, i: int) -> int:
        newline = view.find(b"\n", i)
        if newline < 0:
            if len(view) - i > self.max_header:
                return self._fail_body(view, i, "chunk-size line too long")
            return ~i
        size = parse_chunk_size(view[i:newline])
        if size < 0:
            return self._fail_body(view, i, "bad chunk-size line")
        self.message.last_ts = self._ts  # type: ignore[union-attr]  # set in this state
        if size == 0:
            self.state = TRAILERS
            self._scan = 0
        else:
            self.state = CHUNK_DATA
            self._remaining = size
        return newline + 1

    def _on_chunk_data(self, view: Bytes, i: int) -> int:
        end, complete = self._take_counted(view, i)
        if complete:
            self.state = CHUNK_END
        return end

    def _on_chunk_end(self, view: Bytes, i: int) -> int:
        c = view[i]
        if c == 10:
            self.state = CHUNK_SIZE
            return i + 1
        if c == 13:
            if i + 1 >= len(view):
                return ~i
            if view[i + 1] == 10:
                self.state = CHUNK_SIZE
                return i + 2
        return self._fail_body(view, i, "chunk data not followed by CRLF")

    def _on_trailers(self, view: Bytes, i: int) -> int:
        b: MessageBuilder = self.message  # type: ignore[assignment]  # set in this state
        c = view[i]
        if c == 10 or c == 13:              # no trailer fields: just the final empty line
            if c == 13:
                if i + 1 >= len(view):
                    return ~i
                if view[i + 1] != 10:
                    return self._fail_body(view, i, "bad line after the last chunk")
                i += 1
            b.last_ts = self._ts
            self._finish()
            return i + 1
        scan = self._scan
        start = i + scan - 3 if scan > 3 else i
        end = view.find(b"\n\r\n", start)
        bare = view.find(b"\n\n", start, end if end >= 0 else len(view))
        if bare >= 0:
            end, after = bare, bare + 2
        elif end >= 0:
            after = end + 3
        else:
            if len(view) - i > self.max_header:
                return self._fail_body(view, i, "trailer block too large")
            self._scan = len(view) - i
            return ~i
        self._scan = 0
        try:
            text = view[i:end - 1 if view[end - 1] == 13 else end].decode("latin-1")
            b.trailers = tuple(parse_fields(split_lines(text)))
        except MalformedHead:
            return self._fail_body(view, i, "bad trailer field")
        b.last_ts = self._ts
        self._finish()
        return after

    def _on_until_close(self, view: Bytes, i: int) -> int:
        b: MessageBuilder = self.message  # type: ignore[assignment]  # set in this state
        b.add_body(view, i, len(view))
        b.last_ts = self._ts
        return len(view)

    def _on_opaque(self, view: Bytes, i: int) -> int:
        if self.divert is not None and self.state == OPAQUE:
            self.divert.receive_data(bytes(view[i:]), self._ts)
        else:
            self.stats["opaque_bytes"] += len(view) - i
        return len(view)

    def _on_paused(self, view: Bytes, i: int) -> int:
        return ~i   # the rest waits in `buffer` until resume()

    def _fail_body(self, view: Bytes, i: int, reason: str) -> int:
        """Malformed framing inside a body: the message ends here, flagged; resync from this line."""
        self.stats["parse_errors"] += 1
        self._break_message(F_PARSE_ERROR)
        self._next_flags |= F_PARSE_ERROR
        self._line_start = True
        return i

    # -- endings -----------------------------------------------------------------------------------

    def _finish(self, next_state: int = HEAD) -> None:
        b: MessageBuilder = self.message  # type: ignore[assignment]  # called with a message under way
        self.message = None
        b.done = True
        self.state = next_state
        following = self.sink.message_finished(self, b)
        if following is not None and self.state == HEAD:
            self.state = following

    def _break_message(self, bits: int) -> None:
        """End the current message early, flagged, and look for the next start line."""
        b = self.message
        if b is not None:
            b.flags |= bits
            b.broken = True
            b.truncated = True
            self._finish(next_state=SYNC)
        self.state = SYNC

    def _lose_framing(self, bit: int) -> None:
        """Bytes missing where framing is needed: whatever message was going on is broken, and if
        none was, the missing bytes began one (a message start was lost)."""
        self.stats["framing_lost"] += 1
        self.stats["skipped_bytes"] += len(self.buffer)
        if self.message is not None:
            self._break_message(bit | F_GAP)
        elif self.state == HEAD and (self.synced or self._at_start):
            # a partial head, or the very start of a message, is gone
            self.sink.message_lost(self, bit | F_GAP)
        self._at_start = False
        self.buffer = bytearray()
        self.state = SYNC
        self._scan = 0
        self._first_line_ok = False
        self._line_start = True   # after a hole, a fresh write (and message) is the likely next thing

    def _end(self, ts_ns: int, eof: bool) -> None:
        self._ts = ts_ns
        if self.state == PAUSED:
            self.resume()
        if self.state == PAUSED:        # paused again: what waits will never be answered
            self.deferred, self.deferred_bytes = [], 0
            self.state = HEAD
        b = self.message
        if b is not None:
            if not (eof and self.state == UNTIL_CLOSE):
                b.cut_off = True
                if self.state != UNTIL_CLOSE:
                    b.truncated = True
            self._finish(next_state=CLOSED)
        self.stats["skipped_bytes"] += len(self.buffer)
        self.buffer = bytearray()
        self.state = CLOSED


_HANDLERS = (MessageReader._on_sync, MessageReader._on_head, MessageReader._on_body,
             MessageReader._on_chunk_size, MessageReader._on_chunk_data, MessageReader._on_chunk_end,
             MessageReader._on_trailers, MessageReader._on_until_close, MessageReader._on_opaque,
             MessageReader._on_paused, MessageReader._on_opaque)   # CLOSED: ignore like OPAQUE


# -- bodies ---------------------------------------------------------------------------------------

MAX_DECODED_BODY = 64 * 1024 * 1024   # a small compressed body can inflate enormously


def decoded_body(message: Message, max_size: int = MAX_DECODED_BODY) -> bytes:
    """The body with its content codings (and any transfer codings besides chunked) undone.

    gzip / x-gzip / deflate (zlib-wrapped or raw) are decoded with the stdlib; identity is skipped.
    Anything else (br, zstd, compress...) or a decoding error gives back the raw body.  A truncated
    body decodes as far as it goes.  The result is capped at `max_size` bytes.
    """
    codings: list[str] = []
    transfer: list[str] = []
    for name, value in message.headers:
        lname = name.lower()
        if lname == "content-encoding":
            codings.extend(item.strip().lower() for item in value.split(",") if item.strip())
        elif lname == "transfer-encoding":
            transfer.extend(item.strip().lower() for item in value.split(",") if item.strip())
    # The sender applied content codings first, then transfer codings: undo them in reverse.
    codings += [coding for coding in transfer if coding != "chunked"]
    body = message.body
    if not body or not codings:
        return body
    data = body
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            decoded = _inflate(data, (16 + zlib.MAX_WBITS,), max_size, multi_member=True)
        elif coding == "deflate":
            decoded = _inflate(data, (zlib.MAX_WBITS, -zlib.MAX_WBITS), max_size, multi_member=False)
        else:
            return body
        if decoded is None:
            return body
        data = decoded
    return data


def _inflate(data: bytes, wbits_choices: tuple[int, ...], max_size: int, multi_member: bool) -> bytes | None:
    for wbits in wbits_choices:
        try:
            out = []
            size = 0
            rest = data
            while rest and size < max_size:
                inflater = zlib.decompressobj(wbits)
                out.append(inflater.decompress(rest, max_size - size))
                size += len(out[-1])
                if not (multi_member and inflater.eof):
                    break
                rest = inflater.unused_data   # gzip allows several members back to back
                if rest and rest[:2] != b"\x1f\x8b":
                    break
            return b"".join(out)
        except zlib.error:
            continue
    return None


def gzip_compress(data: bytes) -> bytes:
    """gzip with a fixed mtime (reproducible); for tests and benchmarks."""
    return gzip.compress(data, mtime=0)
