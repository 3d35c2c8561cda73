"""The small interface a protocol stage implements for the Reassembler (sessions.py).

Two protocols sit under one reassembler: HTTP/1 (`http1.MessageReader` per direction, pairing in
`h1pairing.Http1Session`) and HTTP/2 (`http2.FrameReader` per direction, streams in
`h2streams.Http2Session`).  `detect.Sniffer` stands in for a direction's reader until a
connection's first bytes say which.  The Reassembler orders each direction's events
(`streams.DirectionStream`), keeps memory within its caps and never looks further than this:
"""
from __future__ import annotations

from typing import Protocol

from .exchange import Connection, Role


class DirectionReader(Protocol):
    """What one side sent, in stream order."""

    kind: int                 # http1.REQUEST / RESPONSE / EITHER (HTTP/1 pairing after loss reads it)
    buffer: bytearray         # received, not consumed yet
    deferred_bytes: int       # other bytes held (calls waiting, a header block being joined)

    def receive_data(self, data: bytes, ts_ns: int) -> None: ...
    def receive_missing(self, count: int, ts_ns: int, cause: int) -> None: ...   # TRUNCATED, NOT_VISIBLE, LOST
    def receive_eof(self, ts_ns: int) -> None: ...
    def abort(self, ts_ns: int) -> None: ...
    def absorbs(self, count: int) -> bool: ...       # would `count` missing bytes leave the framing intact?
    def discard_buffer(self) -> int: ...             # memory pressure: drop what is buffered


class ProtocolSession(Protocol):
    """One connection.  Exchanges go to the owner (`Reassembler._completed`) as they complete."""

    key: tuple[int, int, int]
    connection: Connection
    exchange_connection: Connection   # connection with the role the traffic showed
    role: Role
    readers: tuple                    # (egress, ingress) DirectionReaders
    streams: tuple                    # (egress, ingress) streams.DirectionStream
    tentative: object                 # truthy while HTTP/1 pairings wait for the request direction
    event_ts: list                    # per direction: ts of the last segment read
    last_ts: int | None
    buffered: int                     # bytes counted in the owner's total for this session

    def describe(self, connection: Connection) -> None: ...      # the open event came after data
    def lost_bytes(self, direction: int, gap) -> None: ...       # a streams.Gap the reader cannot absorb
    def request_bytes_follow(self) -> None: ...
    def measure(self) -> tuple[int, int]: ...                    # (unparsed bytes, all buffered bytes)
    def bodies(self) -> list: ...                                # builders the global cap may cut()
    def finish(self, ts_ns: int, eof: bool) -> None: ...         # closed, or no longer watched
    def restarted(self) -> ProtocolSession: ...                  # fresh state after an internal error
