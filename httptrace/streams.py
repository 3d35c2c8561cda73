"""Stage 1 of reassembly: one direction of one connection as a byte stream ordered by `pos`.

The kernel numbers every byte a socket carries, per direction: an event says "`payload` starts at
`pos`, and the `not_copied` bytes right after it were sent but not copied".  This module turns those
events back into a contiguous stream and says plainly what is missing from it:

- `Segment`: bytes (or a known number of uncopied / sendfile bytes) that follow what came before;
- `Gap`: bytes that were sent but whose events were lost (a jump in `pos`).  A reader must never glue
  bytes across a gap: what follows may be the middle of anything.

Events can arrive slightly out of order (two threads writing the same socket, or any per-CPU
buffering), so a segment that lands ahead of the expected position is held for a short while, in
case the missing piece turns up; only when too many segments, too many bytes or too much time have
gone by is the hole declared a gap.
"""
from __future__ import annotations

from typing import final


class Segment:
    """Contiguous stream content: `payload` at `pos`, then `not_copied` bytes the kernel did not copy."""

    __slots__ = ("pos", "payload", "not_copied", "ts_ns", "not_visible")

    def __init__(self, pos: int, payload: bytes, not_copied: int, ts_ns: int, not_visible: bool = False):
        self.pos = pos
        self.payload = payload
        self.not_copied = not_copied
        self.ts_ns = ts_ns
        self.not_visible = not_visible   # not_copied bytes came from sendfile(), not a capture cap

    @property
    def end(self) -> int:
        return self.pos + len(self.payload) + self.not_copied

    def __repr__(self) -> str:
        return (f"Segment(pos={self.pos}, payload={self.payload[:32]!r}{'...' if len(self.payload) > 32 else ''}, "
                f"not_copied={self.not_copied}, not_visible={self.not_visible})")


@final   # so that `type(piece) is Gap` tells a type checker the other pieces are Segments
class Gap:
    """`size` bytes at `pos` were sent but their events were lost; `ts_ns` is when we gave up on them."""

    __slots__ = ("pos", "size", "ts_ns")

    def __init__(self, pos: int, size: int, ts_ns: int):
        self.pos = pos
        self.size = size
        self.ts_ns = ts_ns

    def __repr__(self) -> str:
        return f"Gap(pos={self.pos}, size={self.size})"


class DirectionStream:
    """Orders one direction's events by `pos`; hands on in-order `Segment`s and `Gap`s.

    `expected` is the position of the next byte; None until the first event when the start of the
    stream was not seen (a connection found mid-stream starts wherever its first event starts).
    Callers may skip `push` when `pos == expected and not held` (the common case) and just advance
    `expected` themselves; `push` does the same thing, only slower.
    """

    __slots__ = ("expected", "held", "held_bytes", "window", "timeout_ns", "max_held_bytes",
                 "reordered", "duplicates")

    def __init__(self, start: int | None = 0, *, window: int = 4, timeout_ns: int = 250_000_000,
                 max_held_bytes: int = 1 << 20):
        self.expected = start
        self.held: dict[int, Segment] = {}   # segments ahead of `expected`, by pos
        self.held_bytes = 0                  # payload bytes in `held`
        self.window = window                 # hold at most this many segments before calling it a gap
        self.timeout_ns = timeout_ns         # ... or for at most this long (event time)
        self.max_held_bytes = max_held_bytes
        self.reordered = 0                   # segments that arrived ahead of a hole
        self.duplicates = 0                  # segments (or parts) we had already passed on

    def push(self, pos: int, payload: bytes, not_copied: int, ts_ns: int,
             not_visible: bool = False) -> list[Segment | Gap]:
        """Take one event; return what can now be passed on, in stream order."""
        if self.expected is None:
            self.expected = pos
        segment = Segment(pos, payload, not_copied, ts_ns, not_visible)
        out: list[Segment | Gap] = []
        if pos > self.expected:
            self._hold(segment)
            if self._waited_too_long(ts_ns):
                self._release_into(out)
            return out
        self._pass_on(segment, out)
        if self.held:
            self._drain_contiguous(out)
        return out

    def release(self) -> list[Segment | Gap]:
        """Stop waiting for holes: everything held, in order, with a Gap for every hole."""
        out: list[Segment | Gap] = []
        self._release_into(out)
        return out

    def release_stale(self, now_ns: int) -> list[Segment | Gap]:
        """Release held segments if the oldest has waited longer than `timeout_ns` by `now_ns`."""
        if self.held and now_ns - self._oldest_held_ts() > self.timeout_ns:
            return self.release()
        return []

    def drop_held(self) -> int:
        """Forget held segments (memory pressure); their bytes will surface later as part of a gap."""
        dropped = self.held_bytes
        self.held.clear()
        self.held_bytes = 0
        return dropped

    # -- internals ---------------------------------------------------------------------------------

    def _hold(self, segment: Segment) -> None:
        previous = self.held.get(segment.pos)
        if previous is not None:        # the same range twice: keep the longer
            if previous.end >= segment.end:
                self.duplicates += 1
                return
            self.held_bytes -= len(previous.payload)
        self.held[segment.pos] = segment
        self.held_bytes += len(segment.payload)
        self.reordered += 1

    def _waited_too_long(self, ts_ns: int) -> bool:
        return (len(self.held) > self.window or self.held_bytes > self.max_held_bytes
                or ts_ns - self._oldest_held_ts() > self.timeout_ns)

    def _oldest_held_ts(self) -> int:
        return min(segment.ts_ns for segment in self.held.values())

    def _pass_on(self, segment: Segment, out: list[Segment | Gap]) -> None:
        """Append `segment` minus whatever part of it is already behind `expected`."""
        skip = self.expected - segment.pos  # type: ignore[operator]  # push() set `expected`
        if skip > 0:
            length = len(segment.payload)
            if skip >= length + segment.not_copied:
                self.duplicates += 1
                return
            if skip <= length:
                segment.payload = segment.payload[skip:]
            else:
                segment.not_copied -= skip - length
                segment.payload = b""
            segment.pos = self.expected  # type: ignore[assignment]
        self.expected = segment.end
        out.append(segment)

    def _drain_contiguous(self, out: list[Segment | Gap]) -> None:
        held = self.held
        while held:
            pos = min(held)
            if pos > self.expected:  # type: ignore[operator]
                return
            segment = held.pop(pos)
            self.held_bytes -= len(segment.payload)
            self._pass_on(segment, out)

    def _release_into(self, out: list[Segment | Gap]) -> None:
        held = self.held
        while held:
            pos = min(held)
            segment = held.pop(pos)
            self.held_bytes -= len(segment.payload)
            if pos > self.expected:  # type: ignore[operator]
                out.append(Gap(self.expected, pos - self.expected, segment.ts_ns))  # type: ignore[arg-type, operator]
                self.expected = pos
            self._pass_on(segment, out)
