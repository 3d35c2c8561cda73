"""Stage 3 of reassembly: connections, their protocol, expiry and memory bounds.

The `Reassembler` is what the loader talks to: it gets open/data/close events keyed by
(pid, fd, tsid) and hands back `Exchange`s.  Per connection it keeps, for each direction, a
`streams.DirectionStream` (orders events, finds gaps) feeding that direction's reader, and a
session implementing protocol.ProtocolSession.  Every connection starts as an
`h1pairing.Http1Session` whose readers are `detect.Sniffer`s: its first bytes choose HTTP/1 (its
`http1.MessageReader`s and pairing) or HTTP/2 (an `h2streams.Http2Session` takes the key over); a
`101` to `Upgrade: h2c` hands both directions to an Http2Session after the 101 exchange.

Nothing here raises to the caller: an unexpected error inside is counted (`internal_errors`) and the
connection is restarted as if caught mid-stream.
"""
from __future__ import annotations

from ._log import get_logger
from .exchange import Connection, Exchange, Role
from .h1pairing import Http1Session
from .h2streams import Http2Session
from .http1 import F_INCOMPLETE, F_TRUNCATED, LOST, NOT_VISIBLE, REQUEST, TRUNCATED, MessageBuilder, decoded_body
from .streams import Gap

__all__ = ["Reassembler", "decoded_body"]

log = get_logger("httptrace.sessions")

_LOGGED_ERRORS = 10           # internal errors logged in full; the rest are only counted

_STAT_KEYS = ("exchanges", "incomplete", "gaps", "truncated", "parse_errors", "orphan_responses",
              "lost_requests", "lost_responses", "skipped_bytes", "framing_lost", "interim_responses",
              "upgrades", "opaque_bytes", "bodies_cut", "buffer_overflows", "evicted_requests",
              "reordered", "duplicates", "internal_errors", "http2_connections", "hpack_unknown_fields", "resets",
              "refused_streams", "pushed_streams")


class Reassembler:
    """Turns the kernel's connection events into HTTP exchanges.  See the module docstring.

    `reorder_window` (segments) and `reorder_timeout_ns` let a direction wait for a hole in `pos` to
    fill before calling it a gap.  The kernel reports each direction in order (a syscall's chunks from
    one CPU), so a hole is a loss and the default is not to wait; when waiting, an event in the other
    direction ends it, as pairing needs both directions in time order.
    """

    def __init__(self, *, max_body: int = 1 << 20, max_connection_buffer: int = 1 << 20,
                 max_total_buffer: int = 256 << 20, idle_timeout_ns: int = 60_000_000_000,
                 max_header: int = 64 << 10, reorder_window: int = 0, reorder_timeout_ns: int = 250_000_000):
        self.max_body = max_body
        self.max_connection_buffer = max_connection_buffer
        self.max_total_buffer = max_total_buffer
        self.idle_timeout_ns = idle_timeout_ns
        self.max_header = max_header
        self.reorder_window = reorder_window
        self.reorder_timeout_ns = reorder_timeout_ns
        self._sessions: dict[tuple[int, int, int], Http1Session | Http2Session] = {}
        self._holding: set = set()          # keys of sessions with out-of-order segments held
        self._out: list[Exchange] = []
        self._stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self._buffered = 0
        self._next_sweep_ns = 0
        self._sweep_every_ns = max(1, min(1_000_000_000, idle_timeout_ns // 10))

    # -- the loader's interface ---------------------------------------------------------------------

    def open(self, key: tuple[int, int, int], connection: Connection) -> None:
        try:
            session = self._sessions.get(key)
            if session is None:
                # A connection whose accept()/connect() the kernel did not see started before we did.
                self._sessions[key] = Http1Session(self, key, connection, mid_stream=connection.role is Role.UNKNOWN,
                                               start=0)
                return
            # Its data came first (events out of order): keep the state, take the better description.
            session.describe(connection)
        except Exception as error:
            self._internal_error(key, error)

    def data(self, key: tuple[int, int, int], direction: int, pos: int, payload: bytes, not_copied: int,
             ts_ns: int, *, not_visible: bool = False) -> None:
        try:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = Http1Session(
                    self, key, Connection(pid=key[0], fd=key[1], tsid=key[2], comm="", local=None, remote=None,
                                          role=Role.UNKNOWN), mid_stream=True, start=None)
            if session.last_ts is None or ts_ns > session.last_ts:
                session.last_ts = ts_ns
            if self._holding and session.streams[1 - direction].held:
                # The other direction waits for a hole to fill; this event is later than what it holds,
                # and pairing needs both directions in time order: stop waiting.
                self._feed(session, 1 - direction, session.streams[1 - direction].release())
            stream = session.streams[direction]
            if stream.expected == pos and not stream.held:
                # In order, nothing waiting: the common case skips the stream's bookkeeping.
                stream.expected = pos + len(payload) + not_copied
                reader = session.readers[direction]
                if session.tentative and reader.kind == REQUEST:
                    session.request_bytes_follow()
                if payload:
                    reader.receive_data(payload, ts_ns)
                if not_copied:
                    reader.receive_missing(not_copied, ts_ns, NOT_VISIBLE if not_visible else TRUNCATED)
                session.event_ts[direction] = ts_ns
            else:
                self._feed(session, direction, stream.push(pos, payload, not_copied, ts_ns, not_visible))
                if stream.held:
                    self._holding.add(key)
            self._account(session)
        except Exception as error:
            self._internal_error(key, error)

    def close(self, key: tuple[int, int, int], ts_ns: int) -> None:
        try:
            self._end_session(key, ts_ns, eof=True)
        except Exception as error:
            self._internal_error(None, error)

    def expire(self, now_ns: int) -> None:
        try:
            if self._holding:
                self._release_stale(now_ns)
            if now_ns < self._next_sweep_ns:
                return
            self._next_sweep_ns = now_ns + self._sweep_every_ns
            idle = []
            for key, session in self._sessions.items():
                if session.last_ts is None:
                    session.last_ts = now_ns     # opened, never used: idle from now
                elif now_ns - session.last_ts >= self.idle_timeout_ns:
                    idle.append(key)
            for key in idle:
                self._end_session(key, now_ns, eof=False)
        except Exception as error:
            self._internal_error(None, error)

    def flush(self, now_ns: int) -> None:
        for key in list(self._sessions):
            try:
                self._end_session(key, now_ns, eof=False)
            except Exception as error:
                self._internal_error(None, error)
        self._sessions.clear()
        self._holding.clear()
        self._buffered = 0

    def drain(self) -> list[Exchange]:
        out, self._out = self._out, []
        return out

    @property
    def stats(self) -> dict[str, int]:
        stats = dict(self._stats)
        for session in self._sessions.values():
            for stream in session.streams:
                stats["reordered"] += stream.reordered
                stats["duplicates"] += stream.duplicates
        stats["connections"] = len(self._sessions)
        stats["buffered_bytes"] = self._buffered
        return stats

    def buffered_by_connection(self) -> dict[tuple[int, int, int], tuple[int, int]]:
        """(unparsed, all buffered) bytes per connection: for tests and debugging."""
        return {key: session.measure() for key, session in self._sessions.items()}

    # -- internals ----------------------------------------------------------------------------------

    def _completed(self, exchange: Exchange, bits: int) -> None:
        self._out.append(exchange)
        stats = self._stats
        stats["exchanges"] += 1
        if bits & F_INCOMPLETE:
            stats["incomplete"] += 1
        if bits & F_TRUNCATED:
            stats["truncated"] += 1

    def _feed(self, session: Http1Session, direction: int, pieces: list) -> None:
        reader = session.readers[direction]
        for piece in pieces:
            if type(piece) is Gap:
                self._stats["gaps"] += 1
                if reader.absorbs(piece.size):      # inside a body: no message was lost whole
                    reader.receive_missing(piece.size, piece.ts_ns, LOST)
                else:
                    session.lost_bytes(direction, piece)
            else:
                if session.tentative and reader.kind == REQUEST:
                    session.request_bytes_follow()
                if piece.payload:
                    reader.receive_data(piece.payload, piece.ts_ns)
                if piece.not_copied:
                    reader.receive_missing(piece.not_copied, piece.ts_ns,
                                           NOT_VISIBLE if piece.not_visible else TRUNCATED)
                session.event_ts[direction] = piece.ts_ns

    def _release_stale(self, now_ns: int) -> None:
        for key in list(self._holding):
            session = self._sessions.get(key)
            if session is None:
                self._holding.discard(key)
                continue
            for direction, stream in enumerate(session.streams):
                self._feed(session, direction, stream.release_stale(now_ns))
            if not (session.streams[0].held or session.streams[1].held):
                self._holding.discard(key)
            self._account(session)

    def _account(self, session: Http1Session) -> None:
        """Keep the buffered-bytes total current and enforce the per-connection and global caps."""
        unparsed, total = session.measure()
        if unparsed > self.max_connection_buffer:
            self._stats["buffer_overflows"] += 1
            unparsed, total = self._shrink_unparsed(session, self.max_connection_buffer)
        self._buffered += total - session.buffered
        session.buffered = total
        if self._buffered > self.max_total_buffer:
            self._shrink_all()

    def _shrink_unparsed(self, session: Http1Session, limit: int) -> tuple[int, int]:
        # First give up waiting for holes (held segments go to the readers, with gaps)...
        for direction, stream in enumerate(session.streams):
            if stream.held:
                self._feed(session, direction, stream.release())
        unparsed, total = session.measure()
        # ... then drop what the readers could not parse yet, largest first.
        for reader in sorted(session.readers, key=lambda r: len(r.buffer) + r.deferred_bytes, reverse=True):
            if unparsed <= limit:
                break
            reader.discard_buffer()
            unparsed, total = session.measure()
        return unparsed, total

    def _shrink_all(self) -> None:
        """Over the global cap: cut the oldest partial bodies, down to 7/8 of the cap (so that we do
        not come back here on every event), then, if unparsed bytes alone are too many, drop those."""
        target = self.max_total_buffer - self.max_total_buffer // 8
        bodies = [b for session in self._sessions.values() for b in session.bodies()]
        bodies.sort(key=lambda b: b.first_ts)
        total = self._buffered
        for b in bodies:
            if total <= target:
                break
            total -= b.cut()
            self._stats["bodies_cut"] += 1
        self._recount()
        if self._buffered > self.max_total_buffer:
            by_unparsed = sorted(self._sessions.values(), key=lambda s: s.measure()[0], reverse=True)
            for session in by_unparsed:
                if self._buffered <= target:
                    break
                for stream in session.streams:
                    stream.drop_held()
                for reader in session.readers:
                    reader.discard_buffer()
                self._stats["buffer_overflows"] += 1
                self._recount()

    def _recount(self) -> None:
        total = 0
        for session in self._sessions.values():
            session.buffered = session.measure()[1]
            total += session.buffered
        self._buffered = total

    def _end_session(self, key: tuple[int, int, int], ts_ns: int, eof: bool) -> None:
        session = self._sessions.pop(key, None)
        if session is None:
            return
        self._holding.discard(key)
        self._buffered -= session.buffered
        for stream in session.streams:
            self._stats["reordered"] += stream.reordered
            self._stats["duplicates"] += stream.duplicates
        try:
            session.finish(ts_ns, eof)
        except Exception as error:
            self._internal_error(None, error)

    def _internal_error(self, key: tuple[int, int, int] | None, error: Exception) -> None:
        """A bug of ours met an input we did not foresee: count it, restart the connection, go on."""
        self._stats["internal_errors"] += 1
        if self._stats["internal_errors"] <= _LOGGED_ERRORS:
            log.warning("reassembler error; connection restarted", key=key, error=repr(error), exc_info=error)
        session = self._sessions.pop(key, None) if key is not None else None
        if session is None:
            self._recount()
            return
        self._holding.discard(key)
        try:
            self._sessions[key] = session.restarted()
        except Exception:
            pass
        self._recount()

    def _start_http2(self, session: Http1Session, client_direction: int | None, *, at_start: bool,
                     upgrade_request: MessageBuilder | None = None,
                     upgrade_settings: dict | None = None) -> Http2Session:
        """The connection of `session` turned out to be HTTP/2: its Http2Session takes over the key."""
        successor = Http2Session(self, session.key, session.exchange_connection, streams=session.streams,
                                 mid_stream=not at_start, client_direction=client_direction,
                                 conn_flags=session.conn_flags, last_ts=session.last_ts, event_ts=session.event_ts,
                                 upgrade_request=upgrade_request, upgrade_settings=upgrade_settings)
        if self._sessions.get(session.key) is session:
            self._sessions[session.key] = successor
        return successor
