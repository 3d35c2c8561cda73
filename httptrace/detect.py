"""Which protocol a connection speaks, told from its first bytes before any protocol stage reads them.

- Seen from its start (accept/connect, or TLS from its first plaintext): the 24-byte client preface
  `PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n` says HTTP/2 and that its sender is the client; a first
  frame that is a server's SETTINGS says HTTP/2 and that its sender is the server; anything else
  is HTTP/1 (which decides at the first byte: a method or `HTTP/` begins with a letter).
- Caught mid-stream: an event beginning with a letter is HTTP/1 (a start line; as a frame header
  it would claim more than 4 MiB); one beginning a plausible chain of frame headers is HTTP/2
  (http2.chain_verdict).  Neither: wait a few events, then HTTP/1 (whose reader resyncs on its own).

`Sniffer` stands in for both directions' readers while this is undecided.  It holds what arrives
(the session keeps one list, so both directions replay in arrival order), asks the session to
settle the protocol, and from then on passes every call to the reader chosen, including calls
made through references taken before the choice.
"""
from __future__ import annotations

from .http2 import ACCEPT, DEFAULT_MAX_FRAME_SIZE, MORE, PREFACE, chain_verdict, is_server_preface

HTTP1 = 1
HTTP2 = 2
SNIFF_EVENTS = 8          # mid-stream: events held while neither protocol is clear
SNIFF_BYTES = 64 << 10    # ... and bytes


def sniff(data, starts: list[int], at_start: bool) -> tuple[int | None, bool]:
    """(HTTP1, HTTP2 or None = not yet, whether the sender is the HTTP/2 client) for the bytes one
    direction sent so far, `starts` being where its events began in `data`."""
    n = len(data)
    head = min(n, len(PREFACE))
    if data[:head] == PREFACE[:head]:
        return (HTTP2, True) if n >= len(PREFACE) else (None, False)
    if at_start:
        if data[0] != 0:
            return HTTP1, False
        if n < 9:
            return None, False
        return (HTTP2, False) if is_server_preface(data) else (HTTP1, False)
    for at in starts:
        first = data[at]
        if 0x41 <= first <= 0x5A or 0x61 <= first <= 0x7A:
            return HTTP1, False
        verdict = chain_verdict(data, at, n, DEFAULT_MAX_FRAME_SIZE, True)
        if verdict == ACCEPT:
            return HTTP2, False
        if verdict == MORE:
            break       # frames may begin here: the next bytes tell
    return None, False


class Sniffer:
    """A direction's reader until the protocol is known (see the module docstring)."""

    kind = 3              # http1.EITHER
    deferred_bytes = 0
    message = None

    __slots__ = ("session", "direction", "at_start", "target", "buffer", "starts")

    def __init__(self, session, direction: int, at_start: bool):
        self.session = session        # has .sniffed (the held calls) and .protocol_found()
        self.direction = direction
        self.at_start = at_start
        self.target = None            # the reader chosen, once it is
        self.buffer = bytearray()     # what this direction sent so far
        self.starts: list[int] = []

    def receive_data(self, data, ts_ns: int) -> None:
        if self.target is not None:
            self.target.receive_data(data, ts_ns)
            return
        if not data:
            return
        first = data[0]
        if (not self.buffer and not self.session.sniffed and first != 0x50
                and (first != 0 if self.at_start else 0x41 <= first <= 0x5A or 0x61 <= first <= 0x7A)):
            # The common case, decided by the first byte with nothing held: no copy, no replay.
            self.session.protocol_found(HTTP1, None, self.at_start)
            self.target.receive_data(data, ts_ns)
            return
        self.session.sniffed.append((self.direction, "receive_data", (data, ts_ns)))
        self.starts.append(len(self.buffer))
        self.buffer += data
        protocol, client = sniff(self.buffer, self.starts, self.at_start)
        if protocol is None and not self.at_start and (len(self.starts) >= SNIFF_EVENTS
                                                       or len(self.buffer) >= SNIFF_BYTES):
            protocol = HTTP1
        if protocol is not None:
            if protocol == HTTP1:
                self.session.protocol_found(HTTP1, None, self.at_start)
            elif client:    # a preface: whatever the kernel knew, this is the connection's start
                self.session.protocol_found(HTTP2, self.direction, True)
            else:
                self.session.protocol_found(HTTP2, 1 - self.direction if self.at_start else None, self.at_start)

    def receive_missing(self, count: int, ts_ns: int, cause: int) -> None:
        if self.target is None:
            self.session.sniffed.append((self.direction, "receive_missing", (count, ts_ns, cause)))
            self.session.protocol_found(HTTP1, None, self.at_start)    # the default: its reader copes with loss
            return
        self.target.receive_missing(count, ts_ns, cause)

    def receive_eof(self, ts_ns: int) -> None:
        if self.target is None:
            self.session.protocol_found(HTTP1, None, self.at_start)
        self.target.receive_eof(ts_ns)

    def abort(self, ts_ns: int) -> None:
        if self.target is None:
            self.session.protocol_found(HTTP1, None, self.at_start)
        self.target.abort(ts_ns)

    def absorbs(self, count: int) -> bool:
        return self.target.absorbs(count) if self.target is not None else False

    def discard_buffer(self) -> int:
        if self.target is not None:
            return self.target.discard_buffer()
        dropped = len(self.buffer)
        self.session.sniffed[:] = [call for call in self.session.sniffed if call[0] != self.direction]
        self.buffer = bytearray()
        self.starts = []
        return dropped
