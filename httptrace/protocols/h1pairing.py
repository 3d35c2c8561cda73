"""Stage 3 for HTTP/1: requests paired with responses on one connection, across losses.

`Http1Session` is what the Reassembler holds for an HTTP/1 connection (protocol.ProtocolSession)
and the sink of its two `http1.MessageReader`s: it pairs each final response with the request it
answers, decides the connection's role from who sends the requests, and turns finished pairs into
exchanges.

Pairing.  HTTP/1.x answers requests in order, so without loss the answer is the oldest request still
waiting.  Lost events (a jump in `pos`) hide how many messages went by, so counting alone goes wrong
after them: responses would shift onto later requests for the rest of the connection.  Time tells
what counting cannot: a response cannot answer a request that began after it, and on a connection
that does not pipeline (the usual case: each request is sent after the previous response began)
the request a response answers is the only one sent since the previous response began.  So:

- a connection pipelines once two requests we saw were sent between two consecutive responses; it is
  then paired in order, and after a loss its pairings are flagged GAP until they are sure again;
- otherwise a response answers the request sent since the previous response (older requests still
  waiting lost their answers: INCOMPLETE+GAP); with none, it answers a request we lost (an orphan);
- a response that follows lost response bytes may instead answer a request lost after the one it
  would pair with.  That pairing waits (tentative) until the request direction shows whether
  anything was lost there: the next request event with no gap before it confirms it, a gap undoes it
  (the request ends INCOMPLETE+GAP, the response is dropped as an orphan);
- a lost request (a gap where a request began) normally has its answer still to come, and a
  placeholder keeps the order; but if a response with no request to answer (an orphan) came since
  the last request event before the gap, that orphan was its answer, and no placeholder is queued.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from .detect import HTTP1, Sniffer
from ..exchange import F_GAP, F_INCOMPLETE, F_MID_STREAM, Connection, Exchange, Role, _flag_sets, flags_of
from .h2streams import Http2Session, parse_http2_settings
from .http1 import EITHER, LOST, OPAQUE, PAUSED, REQUEST, RESPONSE, MessageBuilder, MessageReader, switches_protocol
from ..streams import DirectionStream, Gap

if TYPE_CHECKING:
    from .interface import DirectionReader
    from ..sessions import Reassembler

EGRESS = 0
INGRESS = 1
MAX_PENDING_REQUESTS = 1024   # requests waiting for responses on one connection (pipelining bound)
MAX_ORPHANS = 64              # orphan response times remembered per connection (see message_lost)


def _tokens(value: str | None) -> list[str]:
    return [token.strip().lower() for token in (value or "").split(",") if token.strip()]


def _asks_h2c(request: MessageBuilder | None) -> bool:
    return request is not None and "h2c" in _tokens(request.header("upgrade"))


class _Pending:
    """One request on a connection and what we know of its response."""

    __slots__ = ("request", "sent_ts", "seen", "losses_before", "response", "response_lost", "extra_flags",
                 "tentative")

    def __init__(self, request: MessageBuilder | None, sent_ts: int, losses_before: int, seen: bool = True):
        self.request = request          # None: a request we know was sent but could not read
        self.sent_ts = sent_ts          # its first byte (for a lost one: the event that showed it was lost)
        self.losses_before = losses_before   # request-direction losses before it (Http1Session.request_losses)
        self.seen = seen                # False: lost in a gap, where we only guess that one request began
        self.response: MessageBuilder | None = None
        self.response_lost = False      # its response was sent but could not be read
        self.extra_flags = 0
        self.tentative = False          # `response` may answer a request lost after this one: not emitted yet


class Http1Session:
    """One traced connection: two directions, the requests waiting for responses; the readers' sink."""

    def __init__(self, owner: Reassembler, key: tuple[int, int, int], connection: Connection, *, mid_stream: bool,
                 start: int | None):
        self.owner = owner
        self.key = key
        self.connection = connection
        self.role = connection.role
        self.exchange_connection = connection
        self.conn_flags = F_MID_STREAM if mid_stream else 0
        if connection.role is Role.CLIENT:
            kinds = (REQUEST, RESPONSE)
        elif connection.role is Role.SERVER:
            kinds = (RESPONSE, REQUEST)
        else:
            kinds = (EITHER, EITHER)
        self.message_readers: tuple[MessageReader, ...] = tuple(
            MessageReader(kind, self, max_body=owner.max_body, max_header=owner.max_header, mid_stream=mid_stream,
                          stats=owner._stats) for kind in kinds)
        # What the Reassembler feeds: stand-ins until the first bytes tell HTTP/1 from HTTP/2 (detect.py).
        self.stand_ins = (Sniffer(self, EGRESS, not mid_stream), Sniffer(self, INGRESS, not mid_stream))
        self.readers: tuple[DirectionReader, ...] = self.stand_ins
        self.sniffed: list[tuple[int, str, tuple[Any, ...]]] = []   # calls the stand-ins held, in arrival order
        self.successor: Http2Session | None = None   # after an h2c upgrade: where this connection went
        self.streams = tuple(DirectionStream(start, window=owner.reorder_window, timeout_ns=owner.reorder_timeout_ns,
                                             max_held_bytes=owner.max_connection_buffer) for _ in kinds)
        self.pending: deque[_Pending] = deque()
        self.paused_on: _Pending | None = None   # the would-be upgrade the request reader waits on
        self.last_ts: int | None = None
        self.buffered = 0                        # bytes counted in the owner's total for this session
        # Pairing across losses (see the module docstring).
        self.event_ts: list[int | None] = [None, None]   # per direction: ts of the last segment read
        self.last_response_ts: int | None = None  # first_ts of the last final response begun
        self.response_gap = False     # response bytes lost where a response may have begun, since then
        self.pipelined = False        # two requests were seen between two consecutive responses
        # Losses where a message may have begun, per direction, and their counts when the order was
        # last known to be right: pipelined pairings made across a loss since then are flagged.
        self.request_losses = self.response_losses = 0
        self.sure_request_losses = self.sure_response_losses = 0
        self.tentative: list[_Pending] = []   # pairings waiting for the request direction to confirm them
        self.orphans: list[int] = []  # first_ts of orphan responses since the last request began
        self.gap_lo: int | None = None   # while a request gap is fed: ts of the request event before it
        self.feeding_request_gap = False
        self.resuming = False         # the request reader goes on after a would-be upgrade was refused

    # -- the protocol -------------------------------------------------------------------------------

    def protocol_found(self, protocol: int, client_direction: int | None, at_start: bool) -> None:
        """The first bytes told (detect.py): hand what was held to the readers of that protocol."""
        targets: tuple[DirectionReader, ...]
        if protocol == HTTP1:
            targets = self.message_readers
            self.readers = targets
        else:
            targets = self.owner._start_http2(self, client_direction, at_start=at_start).readers
        # (cast: assigned either kind of reader, mypy joins the two tuples to object)
        for stand_in, target in zip(self.stand_ins, cast("tuple[DirectionReader, ...]", targets)):
            stand_in.target = target
        held, self.sniffed = self.sniffed, []
        for direction, call, args in held:
            getattr(targets[direction], call)(*args)

    def describe(self, connection: Connection) -> None:
        """The open event arrived after data: keep the state, take the better description."""
        self.connection = connection
        if self.role is Role.UNKNOWN and connection.role is not Role.UNKNOWN:
            egress, ingress = self.message_readers
            if egress.kind == EITHER and ingress.kind == EITHER:
                client = connection.role is Role.CLIENT
                egress.set_kind(REQUEST if client else RESPONSE)
                ingress.set_kind(RESPONSE if client else REQUEST)
                self._set_role(connection.role)
                return
        self._set_role(self.role)

    def restarted(self) -> Http1Session:
        """A fresh state for this connection, as if it had been caught mid-stream (after an internal error)."""
        fresh = Http1Session(self.owner, self.key, self.exchange_connection, mid_stream=True, start=None)
        fresh.last_ts = self.last_ts
        return fresh

    def _upgrade_to_http2(self, entry: _Pending) -> None:
        """A 101 to `Upgrade: h2c`: the rest of both directions is HTTP/2, stream 1 answers `entry`."""
        request_reader = self._request_reader()
        client = self.message_readers.index(request_reader)
        request: MessageBuilder = entry.request  # type: ignore[assignment]  # _asks_h2c() saw it
        self.successor = successor = self.owner._start_http2(
            self, client, at_start=True, upgrade_request=request,
            upgrade_settings=parse_http2_settings(request.header("http2-settings")))
        for reader, target in zip(self.message_readers, successor.readers):
            reader.divert = target
        request_reader.go_opaque()      # what it held after the upgrade request goes to HTTP/2

    # -- sink interface for the two MessageReaders --------------------------------------------------

    def kind_decided(self, reader: MessageReader) -> None:
        egress, ingress = self.message_readers
        other = ingress if reader is egress else egress
        other.set_kind(RESPONSE if reader.kind == REQUEST else REQUEST)
        egress_sends_requests = (reader is egress) == (reader.kind == REQUEST)
        self._set_role(Role.CLIENT if egress_sends_requests else Role.SERVER)

    def message_started(self, reader: MessageReader, b: MessageBuilder) -> str | None:
        pending = self.pending
        entry: _Pending | None
        if b.is_request:
            if len(pending) >= MAX_PENDING_REQUESTS:
                self._evict_oldest()
            entry = _Pending(b, b.first_ts, self.request_losses)
            b.entry = entry
            pending.append(entry)
            if self.resuming:
                # It waited behind a would-be upgrade, sent before that was answered: the client
                # does not wait for answers.
                self.pipelined = True
            if self.orphans:    # only orphans later than the request event before a gap matter
                self.orphans = [ts for ts in self.orphans if ts > b.first_ts]
            return None
        entry = self._answered_by(b)
        if entry is None:
            # Nothing (we saw) asked for it: caught mid-stream, or it answers a request we lost.
            b.orphan = True
            self.owner._stats["orphan_responses"] += 1
            if b.status == 101:     # whatever it answered, the connection is not HTTP any more
                self.paused_on = None
                self._request_reader().go_opaque()
            return None
        entry.response = b
        b.entry = entry
        method = entry.request.method  # type: ignore[union-attr]  # _answered_by() returns requests we have
        # The request reader may be waiting on this answer; it is the other reader, so calling it
        # from inside this one's callback is safe (and must not wait: the next response in this
        # very payload may answer a request that is still waiting in there).
        if switches_protocol(method, b.status):
            self.owner._stats["upgrades"] += 1
            self.paused_on = None
            if b.status == 101 and _asks_h2c(entry.request) and _tokens(b.header("upgrade")) == ["h2c"]:
                self._upgrade_to_http2(entry)
            else:
                self._request_reader().go_opaque()
        elif entry is self.paused_on:
            self.paused_on = None
            self._resume_requests()
        return method

    def message_finished(self, reader: MessageReader, b: MessageBuilder) -> int | None:
        entry = b.entry
        if entry is None:           # orphan response, or an evicted request
            return None
        following = None
        if b.is_request and (b.method == "CONNECT" or b.upgrade) and not (b.broken or b.cut_off):
            # What follows may not be HTTP: wait for the response to say whether the protocol switches.
            if entry.response is None and not entry.response_lost:
                self.paused_on = entry
                following = PAUSED
            elif entry.response is not None and switches_protocol(b.method, entry.response.status):
                following = OPAQUE
        if entry.response is not None or entry.response_lost:    # (else _try_emit would wait: inlined)
            self._try_emit(entry)
        return following

    def message_lost(self, reader: MessageReader, bits: int) -> None:
        stats = self.owner._stats
        if reader.kind == REQUEST:
            stats["lost_requests"] += 1
            if self.feeding_request_gap:
                # Events were lost where this request began.  A response that came since the request
                # event before the gap, with no request waiting for it, was its answer: nothing more
                # will come for it, so no placeholder (it would take the next request's response).
                lo = self.gap_lo
                answered = any(lo is None or ts > lo for ts in self.orphans)
                self.orphans = []
                if answered:
                    return
            # Its response is still to come: a placeholder keeps the following responses paired right.
            if len(self.pending) >= MAX_PENDING_REQUESTS:
                self._evict_oldest()
            self.pending.append(_Pending(None, reader.ts, self.request_losses, not self.feeding_request_gap))
        elif reader.kind == RESPONSE:
            stats["lost_responses"] += 1
            for entry in self.pending:
                if entry.response is None and not entry.response_lost:
                    if entry.request is None:
                        self.pending.remove(entry)
                        return
                    self._lose_response(entry, bits)
                    return

    # -- losses, as the Reassembler feeds them ------------------------------------------------------

    def lost_bytes(self, direction: int, gap: Gap) -> None:
        """Feed a gap where a message may have begun (not one inside a body of known length)."""
        if self.successor is not None:
            self.successor.lost_bytes(direction, gap)
            return
        reader = self.message_readers[direction]
        kind = reader.kind
        if kind == RESPONSE:
            self.response_gap = True
            self.response_losses += 1
            reader.receive_missing(gap.size, gap.ts_ns, LOST)
        elif kind == REQUEST:
            if self.tentative:      # a request may have been lost before the response they took
                self._undo_tentative()
            self.request_losses += 1
            self.feeding_request_gap = True
            self.gap_lo = self.event_ts[direction]
            try:
                reader.receive_missing(gap.size, gap.ts_ns, LOST)
            finally:
                self.feeding_request_gap = False
        else:
            reader.receive_missing(gap.size, gap.ts_ns, LOST)

    def request_bytes_follow(self) -> None:
        """The request direction goes on with no loss: no request was lost before the tentative pairings."""
        entries, self.tentative = self.tentative, []
        for entry in entries:
            entry.tentative = False
            self._try_emit(entry)

    def _undo_tentative(self) -> None:
        entries, self.tentative = self.tentative, []
        stats = self.owner._stats
        for entry in entries:
            entry.tentative = False
            b = entry.response
            entry.response = None
            if b is not None:
                b.entry = None
                b.orphan = True
                b.capture_left = 0
                stats["orphan_responses"] += 1
                self._note_orphan(b.first_ts)
            self._lose_response(entry, F_GAP)

    def _lose_response(self, entry: _Pending, bits: int) -> None:
        """`entry`'s response was sent but we cannot have it: it ends INCOMPLETE, flagged `bits`."""
        entry.response_lost = True
        entry.extra_flags |= bits
        if entry is self.paused_on:
            self.paused_on = None
            self._resume_requests()
        self._try_emit(entry)

    def _resume_requests(self) -> None:
        self.resuming = True
        try:
            self._request_reader().resume()
        finally:
            self.resuming = False

    def _note_orphan(self, ts: int) -> None:
        orphans = self.orphans
        orphans.append(ts)
        if len(orphans) > MAX_ORPHANS:
            del orphans[0]

    # -- pairing ------------------------------------------------------------------------------------

    def _answered_by(self, b: MessageBuilder) -> _Pending | None:
        """The entry whose request final response `b` answers (b.first_ts is its first byte), or None."""
        ts = b.first_ts
        previous = self.last_response_ts
        self.last_response_ts = ts
        gap = self.response_gap
        self.response_gap = False
        pending = self.pending
        if not gap and not self.pipelined and len(pending) == 1:
            # The common case: one request waiting, sent between the previous response and this one.
            entry = pending[0]
            if (entry.request is not None and entry.response is None and not entry.response_lost
                    and entry.sent_ts <= ts and (previous is None or entry.sent_ts > previous)):
                self.sure_request_losses = self.request_losses      # (_order_is_sure, inlined)
                self.sure_response_losses = self.response_losses
                return entry
        waiting = [entry for entry in pending if entry.response is None and not entry.response_lost]
        if self.pipelined:
            return self._in_order(waiting, ts, previous, gap)
        before = [entry for entry in waiting if entry.sent_ts <= ts]
        recent = [entry for entry in before if previous is None or entry.sent_ts > previous]
        seen = sum(entry.seen for entry in recent)
        if seen >= 2 and not gap:
            # Two requests between two consecutive responses: the client pipelines.  (A request lost
            # in a gap does not count: those bytes may as well have been the start of the next one.)
            self.pipelined = True
            return self._in_order(waiting, ts, previous, gap)
        # Not pipelining: it answers the request sent since the previous response; whatever waits from
        # before that lost its answer (or, for a placeholder, this response or a lost one answered it).
        chosen = recent[-1] if recent else None
        consumed = doubtful = False
        for entry in before:
            if entry is chosen:
                break
            if entry.request is None:
                pending.remove(entry)
                consumed = True
                if not gap and (previous is None or entry.sent_ts > previous):
                    # A request lost since the previous response, and this one is not after lost
                    # response bytes: either the loss took the start of `chosen` (then what we read
                    # of it began mid-way), or the client pipelines after all.
                    doubtful = True
            else:
                self._lose_response(entry, F_GAP)
        if chosen is None or chosen.request is None:
            if chosen is not None:
                pending.remove(chosen)      # it answers the request we could not read
            elif not consumed:
                self._note_orphan(ts)
            return None
        if gap:
            # Responses were lost just before this one: it may answer a request lost after `chosen`.
            if seen >= 2:    # ... or, if the client pipelines after all, an older one
                doubtful = True
            chosen.tentative = True
            self.tentative.append(chosen)
        if doubtful:
            chosen.extra_flags |= F_GAP
        elif not gap:
            self._order_is_sure()
        return chosen

    def _in_order(self, waiting: list[_Pending], ts: int, previous: int | None, gap: bool) -> _Pending | None:
        """Pipelined connection: the oldest request waiting (flagged while a loss may have shifted it)."""
        entry = waiting[0] if waiting else None
        if entry is None or entry.request is None or entry.request.first_ts > ts:
            if entry is not None and entry.request is None:
                self.pending.remove(entry)
            else:
                self._note_orphan(ts)
            return None
        if not gap and len(waiting) == 1 and (previous is None or entry.request.first_ts > previous):
            # The only request waiting, sent after the previous response began: nothing earlier is
            # unanswered, so the order is known again.
            self._order_is_sure()
        elif entry.losses_before != self.sure_request_losses or self.response_losses != self.sure_response_losses:
            # Requests lost before it, or responses lost before this one, since the order was last
            # sure: how many is a guess, and so is this pairing.
            entry.extra_flags |= F_GAP
        return entry

    def _order_is_sure(self) -> None:
        self.sure_request_losses = self.request_losses
        self.sure_response_losses = self.response_losses

    # -- pairing and output -------------------------------------------------------------------------

    def _request_reader(self) -> MessageReader:
        egress, ingress = self.message_readers
        return egress if egress.kind == REQUEST else ingress

    def _set_role(self, role: Role) -> None:
        self.role = role
        self.exchange_connection = dataclasses.replace(self.connection, role=role)

    def _try_emit(self, entry: _Pending) -> None:
        request = entry.request
        if request is None or not request.done or entry.tentative:
            return
        response = entry.response
        if response is None:
            if not entry.response_lost:
                return
        elif not response.done:
            return
        pending = self.pending
        if pending and pending[0] is entry:
            pending.popleft()
        else:
            try:
                pending.remove(entry)
            except ValueError:
                pass
        self._emit(entry)

    def _emit(self, entry: _Pending) -> None:
        request: MessageBuilder = entry.request  # type: ignore[assignment]  # emitted only when we have it
        response = entry.response
        bits = request.flags | self.conn_flags | entry.extra_flags
        if response is None:
            bits |= F_INCOMPLETE
        else:
            bits |= response.flags
            if response.cut_off:
                bits |= F_INCOMPLETE
        if request.cut_off:
            bits |= F_INCOMPLETE
        flags = _flag_sets.get(bits)
        exchange = Exchange(self.exchange_connection, request.build(),
                            response.build() if response is not None else None,
                            flags if flags is not None else flags_of(bits))   # (flags_of's cache, inlined)
        # Builder and entry point at each other: unlink them, so they are freed now rather than by
        # the cycle collector (which would otherwise run every few hundred exchanges).
        request.entry = None
        if response is not None:
            response.entry = None
        self.owner._completed(exchange, bits)

    def _evict_oldest(self) -> None:
        entry = self.pending.popleft()
        self.owner._stats["evicted_requests"] += 1
        if entry is self.paused_on:
            self.paused_on = None
        if entry.tentative:
            entry.tentative = False
            self.tentative.remove(entry)
        if entry.request is not None:
            entry.request.entry = None
            if entry.response is not None:
                entry.response.entry = None
            entry.extra_flags |= F_INCOMPLETE
            self._emit(entry)

    def finish(self, ts_ns: int, eof: bool) -> None:
        """The connection closed (eof) or we stop watching it: emit everything it still holds."""
        for direction in (EGRESS, INGRESS):
            self.owner._feed(self, direction, self.streams[direction].release())
        # Nothing more will tell whether a request was lost before these responses: rather than risk
        # a response paired with the wrong request, their requests end without one.
        if self.tentative:
            self._undo_tentative()
        if self.readers is self.stand_ins:
            self.protocol_found(HTTP1, None, False)    # closed before its first bytes told: HTTP/1, the default
        for reader in self.message_readers:
            if eof:
                reader.receive_eof(ts_ns)
            else:
                reader.abort(ts_ns)
        while self.pending:
            entry = self.pending.popleft()
            if entry.request is not None:
                self._emit(entry)

    # -- memory -------------------------------------------------------------------------------------

    def measure(self) -> tuple[int, int]:
        """(unparsed bytes, all buffered bytes) this connection holds now."""
        egress, ingress = self.message_readers
        out_stream, in_stream = self.streams
        sniffing = self.readers is self.stand_ins
        if not (egress.message or ingress.message or egress.buffer or ingress.buffer
                or out_stream.held or in_stream.held or egress.deferred or ingress.deferred or sniffing):
            # The usual states: between exchanges, or a request waiting for its answer.
            pending = self.pending
            if not pending:
                return 0, 0
            if len(pending) == 1:
                request = pending[0].request
                response = pending[0].response
                return 0, ((request.kept if request is not None and request.done else 0)
                           + (response.kept if response is not None and response.done else 0))
        unparsed = (len(egress.buffer) + len(ingress.buffer) + egress.deferred_bytes + ingress.deferred_bytes
                    + out_stream.held_bytes + in_stream.held_bytes)
        if sniffing:
            unparsed += sum(len(reader.buffer) for reader in self.stand_ins if reader.target is None)
        total = unparsed
        if egress.message is not None:
            total += egress.message.kept
        if ingress.message is not None:
            total += ingress.message.kept
        for entry in self.pending:
            request = entry.request
            if request is not None and request.done:
                total += request.kept
            response = entry.response
            if response is not None and response.done:
                total += response.kept
        return unparsed, total

    def bodies(self) -> list[MessageBuilder]:
        """Builders holding body bytes, for the global cap."""
        found = [reader.message for reader in self.message_readers
                 if reader.message is not None and reader.message.kept]
        for entry in self.pending:
            for b in (entry.request, entry.response):
                if b is not None and b.done and b.kept:
                    found.append(b)
        return found
