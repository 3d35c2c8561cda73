"""The public API: attach the kernel agent, drain its ring buffer, hand on events or exchanges.

    from httptrace import Tracer
    with Tracer(ports=[8080]) as tracer:
        for exchange in tracer.exchanges():
            print(exchange.request.method, exchange.request.target, exchange.response.status)

Only this module and libbpf.py need privileges; everything after the ring buffer is pure Python.
docs/api.md has the whole API with examples (asyncio included).
"""
from __future__ import annotations

import ctypes
import os
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator, Union

from . import checks, events
from ._log import get_logger
from .events import DataFlags, Direction, EventType, RoleHint
from .exchange import Connection, Endpoint, Exchange, Role
from .errors import LibbpfError
from .libbpf import BpfObject, RingBuffer, num_possible_cpus

if TYPE_CHECKING:
    import asyncio

    from .gotls import GoProgram
    from .sessions import Reassembler
    from .tls import TlsProbes

log = get_logger("httptrace.tracer")

DEFAULT_RING_BUFFER_SIZE = 32 << 20
DEFAULT_MAX_BODY = 16 << 20
HEADER_ROOM = 64 << 10     # the kernel copies max_body plus this, so a cut body keeps its headers
POLL_MS = 50               # stop() is noticed, and a quiet trickle of events shown, within this
WAKEUP_BYTES = 256 << 10   # the kernel wakes us early only once this much is waiting
SHED_HEADROOM = 8          # once less than 1/SHED_HEADROOM of the ring is free, new HTTP/1 exchanges are
                           # skipped whole (counted): that room is for the messages already under way (at
                           # 1/4 a backlog the ring would have absorbed was shed: 13,715 exchanges of a
                           # figure-2 run that lost none without shedding)
MAX_BATCH = 4096           # events decoded per batch before exchanges are handed on: bounds memory
DRAIN_SECONDS = 30.0       # after stop(), the most we spend on the backlog (a ring still being filled
                           # by heavy traffic could otherwise keep us forever)
SWEEP_EVERY_S = 2.0        # forget connections of processes that exited without close()
TLS_START_BUDGET_S = 1.0   # examining running Go programs at start (one with DWARF: ~0.1 s)
TLS_RESCAN_EVERY_S = 6.0   # look for TLS libraries of new processes (a thread of tls.TlsProbes): reads
                           # every /proc/PID/maps, so not too often (at 2 s: ~3% of the agent's CPU)
ASYNC_BATCHES = 4          # aexchanges(): batches handed to the event loop and not yet taken; past this
                           # the reader waits and the ring buffer absorbs (then drops, counted), as the
                           # CLI does when its output is slow

Event = Union[events.Open, events.Data, events.Close]

_ROLE_OF_HINT = {RoleHint.UNKNOWN: Role.UNKNOWN, RoleHint.SERVER: Role.SERVER, RoleHint.CLIENT: Role.CLIENT}
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_DATA_HEAD = events.DATA_HEAD.unpack_from
_DATA_OFFSET = events.DATA_OFFSET
_NOT_VISIBLE = int(DataFlags.NOT_VISIBLE)  # plain ints: IntEnum/IntFlag arithmetic is slow on the hot path
_DATA = int(EventType.DATA)


def _monotonic_to_wall_offset() -> int:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC; add this to get time.time_ns() scale. Taken once per run."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Tracer:
    """Attaches httptrace's eBPF programs for its lifetime. Use as a context manager.

    One iteration at a time: events(), exchanges(), exchange_batches() or aexchanges() drain the one
    ring buffer. stop() ends the iteration under way (and any later one) from anywhere."""

    _sink_open: Callable[[events.OpenEvent], None]
    _sink_data: Callable[[tuple[int, int, int], int, int, int, bytes, int, int], None]
    _sink_close: Callable[[events.CloseEvent], None]

    def __init__(self, *, pids: Iterable[int] | None = None, ports: Iterable[int] | None = None,
                 comm: str | None = None, max_body: int = DEFAULT_MAX_BODY,
                 ring_buffer_size: int | None = None, tls: bool = True, programs: str | None = None):
        """Nothing is attached until start() (or `with`). The filters apply in the kernel:

        pids: only these processes; ports: only connections with one of these local or remote ports;
        comm: only processes of this command name (15 characters at most); each unset: all.
        max_body: bytes kept of each body (longer ones are flagged truncated).
        ring_buffer_size: bytes, rounded up to a power of two (default 32 MiB).
        tls: also capture plaintext inside OpenSSL.
        programs: the family of kernel programs, 'auto' (default: 'fast' where the kernel has its
        helpers, else 'compat'), 'fast' or 'compat'; HTTPTRACE_PROGRAMS sets the default. Once
        started, `programs` and `programs_reason` say which family was loaded and why."""
        self.requested_programs = checks.requested_programs(programs)
        self.programs = ""        # the family loaded, once started
        self.programs_reason = ""
        self.pids = sorted(set(pids or ()))
        self.ports = sorted(set(ports or ()))
        self.comm = comm
        self.max_body = max_body
        self.ring_buffer_size = _ring_size(ring_buffer_size or DEFAULT_RING_BUFFER_SIZE)
        self.tls = tls
        self._tls: TlsProbes | None = None  # while attached
        self._object: BpfObject | None = None
        self._ring: RingBuffer | None = None
        self._stopping = False
        self._offset_ns = 0
        self._pending: list[Event] = []  # decoded events, when iterating events()
        self._reassembler: Reassembler | None = None  # while exchanges() runs
        self._reader: tuple[threading.Thread, threading.Event] | None = None  # aexchanges()'s, and its cancel
        self._counts = {"events": 0, "bytes": 0, "connections": 0}  # connections: HTTP ones seen
        self._dead_keys: list[bytes] = []  # conns keys of exited processes, closed at the next sweep
        self._caught_up = False            # the reader emptied the ring since those keys were found
        self._last_drops = 0
        self._last_skipped = 0
        self._ncpus = 1

    # ---- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> "Tracer":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Check the host, load and attach the programs (raises EnvironmentProblem or LibbpfError)."""
        self._stopping = False  # here, not in the iterators: a stop() right after start() must count
        checks.require_environment()
        started = time.monotonic()
        family, why = checks.choose_programs(self.requested_programs)
        try:
            self._object = obj = self._load(family)
        except LibbpfError as exc:
            # The probes said yes but the verifier said no (a backport, an odd config): compat still may.
            # Any other failure (no object file, say) would fail the same way with compat.
            if family != "fast" or self.requested_programs != "auto" or not exc.verifier_log:
                raise
            log.warning("fast programs rejected, loading the compat ones", error=str(exc),
                        verifier=" | ".join(exc.verifier_log[-3:]))
            family, why = "compat", "the kernel rejected the fast programs"
            self._object = obj = self._load(family)
        self.programs, self.programs_reason = family, why
        for pid in self.pids:
            obj.map("target_tgids").update(struct.pack("<I", pid), b"\x01")
        for port in self.ports:
            obj.map("target_ports").update(struct.pack("<H", port), b"\x01")
        self._offset_ns = _monotonic_to_wall_offset()
        self._ring = RingBuffer(obj.map("events"), max_sample=ctypes.sizeof(events.DataEvent), max_count=MAX_BATCH)
        obj.attach_tracepoints()
        if self.tls:
            from .tls import TlsProbes

            self._tls = probes = TlsProbes(obj, exit_program="compat_ssl_exit" if family == "compat" else "ssl_exit")
            # Go programs already running too; static OpenSSL programs are left to the re-scans, as
            # reading their symbol tables would hold up the start.
            probes.refresh(budget_s=TLS_START_BUDGET_S, static_openssl=False)
            probes.rescan_every(TLS_RESCAN_EVERY_S)   # libraries and programs of processes started since
        log.info("attached", programs=f"{family} ({why})", links=len(obj.links),
                 seconds=round(time.monotonic() - started, 3),
                 pids=self.pids or "all", ports=self.ports or "all", comm=self.comm or "all")

    def _load(self, family: str) -> BpfObject:
        """Open, configure and load the object with one family's programs (the shared ones always)."""
        btf = checks.btf_path()
        obj = BpfObject(checks.object_path(), btf_path=None if btf == checks.DEFAULT_BTF else btf)
        try:
            for program in obj.programs():   # a family's programs are SEC("?...") and named by it
                if not program.autoload and program.name.startswith("compat_") == (family == "compat"):
                    program.autoload = True
            obj.rodata().set_initial_value(bytes(self._config()))
            self._ncpus = num_possible_cpus()
            obj.map("scratch").set_max_entries(self._ncpus)
            obj.map("events").set_max_entries(self.ring_buffer_size)
            obj.load()
        except BaseException:
            obj.close()
            raise
        return obj

    def close(self) -> None:
        """Detach everything (idempotent). An aexchanges() reader still running is ended first: it
        must not poll a freed ring buffer."""
        reader = self._reader
        if reader is not None:
            thread, cancel = reader
            cancel.set()
            if thread is not threading.current_thread():
                thread.join()
            self._reader = None
        if self._tls is not None:
            self._tls.close()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._object is not None:
            self._object.close()
            self._object = None

    def stop(self) -> None:
        """End the iteration under way, and any later one, once the ring buffer is drained (pending
        exchanges come last, flagged incomplete). Safe from a signal handler, another thread or a
        coroutine; start() clears it."""
        self._stopping = True

    @property
    def tls_libraries(self) -> list[str]:
        """The OpenSSL libraries and programs probed so far."""
        return list(self._tls.libraries) if self._tls else []

    @property
    def go_programs(self) -> list["GoProgram"]:
        """The Go executables seen (gotls.GoProgram: path, probed, detail), in the order found."""
        return list(self._tls.go.programs) if self._tls else []

    @property
    def attached_programs(self) -> list[str]:
        """Names of the kernel programs attached (one per link)."""
        return [link.program for link in self._object.links] if self._object else []

    def _config(self) -> events.Config:
        config = events.Config()
        config.self_tgid = os.getpid()
        config.filter_tgids = int(bool(self.pids))
        config.filter_ports = int(bool(self.ports))
        config.filter_comm = int(bool(self.comm))
        config.tls = int(bool(self.tls))
        config.comm = (self.comm or "").encode()[: events.COMM_LEN - 1]
        config.max_copy = self.max_body + HEADER_ROOM
        config.wakeup_bytes = min(WAKEUP_BYTES, self.ring_buffer_size // 8)
        config.shed_bytes = self.ring_buffer_size - self.ring_buffer_size // SHED_HEADROOM
        return config

    # ---- the ring buffer ------------------------------------------------------------------------

    def _decode(self, batch: tuple[Any, int]) -> None:
        """Decode a batch from the ring buffer and hand each event to the current sink.

        The batch buffer holds records of (u32 size, 4 bytes of padding, the event, padding to 8)."""
        raw, count = batch
        if not count:
            return
        offset_ns = self._offset_ns
        sink_data = self._sink_data
        counts = self._counts
        data_bytes = 0
        at, end = 0, len(raw)
        while at < end:
            size = _U32.unpack_from(raw, at)[0]
            start = at + 8
            at = start + ((size + 7) & ~7)
            kind = _U32.unpack_from(raw, start)[0]
            if kind == _DATA:
                (_, _, ts_ns, tgid, fd, tsid, pos, length, not_copied, direction, flags, _) = _DATA_HEAD(raw, start)
                data_bytes += length
                payload_at = start + _DATA_OFFSET
                sink_data((tgid, fd, tsid), ts_ns + offset_ns, direction, pos, raw[payload_at:payload_at + length],
                          not_copied, flags)
            elif kind == EventType.OPEN:
                counts["connections"] += 1
                self._sink_open(events.OpenEvent.from_buffer_copy(raw[start:start + size]))
            elif kind == EventType.CLOSE:
                self._sink_close(events.CloseEvent.from_buffer_copy(raw[start:start + size]))
        counts["events"] += count
        counts["bytes"] += data_bytes

    def _key(self, conn: events.ConnId) -> tuple[int, int, int]:
        return (conn.tgid, conn.fd, conn.tsid)

    def _decode_open(self, ev: events.OpenEvent) -> events.Open:
        return events.Open(
            conn=self._key(ev.hdr.conn), ts_ns=ev.hdr.ts_ns + self._offset_ns,
            comm=ev.comm.decode(errors="replace"),
            local=(events.address(ev.family, bytes(ev.local_addr)), ev.local_port),
            remote=(events.address(ev.family, bytes(ev.remote_addr)), ev.remote_port),
            role_hint=RoleHint(ev.role_hint), tls=bool(ev.tls), cgroup_id=ev.cgroup_id)

    # Sinks for events(): decoded event objects queued for the iterator.
    def _queue_open(self, ev: events.OpenEvent) -> None:
        self._pending.append(self._decode_open(ev))

    def _queue_data(self, conn: tuple[int, int, int], ts_ns: int, direction: int, pos: int, payload: bytes,
                    not_copied: int, flags: int) -> None:
        self._pending.append(events.Data(conn=conn, ts_ns=ts_ns, direction=Direction(direction), pos=pos,
                                         payload=payload, not_copied=not_copied, flags=DataFlags(flags)))

    def _queue_close(self, ev: events.CloseEvent) -> None:
        self._pending.append(events.Close(conn=self._key(ev.hdr.conn), ts_ns=ev.hdr.ts_ns + self._offset_ns,
                                          bytes_sent=ev.bytes[0], bytes_received=ev.bytes[1]))

    # Sinks for exchanges(): straight into the reassembler, no event objects in between.
    # While these run, _reassembler is set (exchange_batches() sets it before it installs them).
    def _reassemble_open(self, ev: events.OpenEvent) -> None:
        opened = self._decode_open(ev)
        self._reassembler.open(opened.conn, Connection(  # type: ignore[union-attr]
            pid=opened.conn[0], fd=opened.conn[1], tsid=opened.conn[2], comm=opened.comm,
            local=Endpoint(*opened.local), remote=Endpoint(*opened.remote),
            role=_ROLE_OF_HINT[opened.role_hint], tls=opened.tls, cgroup_id=opened.cgroup_id))

    def _reassemble_data(self, conn: tuple[int, int, int], ts_ns: int, direction: int, pos: int,
                         payload: bytes, not_copied: int, flags: int) -> None:
        self._reassembler.data(conn, direction, pos, payload, not_copied, ts_ns,  # type: ignore[union-attr]
                               not_visible=bool(flags & _NOT_VISIBLE))

    def _reassemble_close(self, ev: events.CloseEvent) -> None:
        self._reassembler.close(self._key(ev.hdr.conn), ev.hdr.ts_ns + self._offset_ns)  # type: ignore[union-attr]

    # ---- iteration ------------------------------------------------------------------------------

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Raw connection and payload events, in ring-buffer order, until stop() (or for `timeout`
        seconds, after which the tracer stays attached for another iteration)."""
        self._sink_open, self._sink_data, self._sink_close = self._queue_open, self._queue_data, self._queue_close
        for _ in self._pump(timeout):
            pending, self._pending = self._pending, []
            yield from pending

    def exchanges(self, timeout: float | None = None) -> Iterator[Exchange]:
        """Complete HTTP exchanges as they finish, until stop() or for `timeout` seconds; then whatever
        is pending, flagged incomplete. The tracer stays attached: iterate again to go on."""
        for batch in self.exchange_batches(timeout):
            yield from batch

    def exchange_batches(self, timeout: float | None = None) -> Iterator[list[Exchange]]:
        """exchanges(), one list per wake-up (possibly empty): a writer can flush once per list."""
        from .sessions import Reassembler

        self._reassembler = reassembler = Reassembler(max_body=self.max_body)
        self._sink_open, self._sink_data = self._reassemble_open, self._reassemble_data
        self._sink_close = self._reassemble_close
        for now_ns in self._pump(timeout):
            reassembler.expire(now_ns)
            yield reassembler.drain()
        reassembler.flush(time.time_ns())
        yield reassembler.drain()

    async def aexchanges(self, timeout: float | None = None) -> AsyncIterator[Exchange]:
        """exchanges() for asyncio: `async for exchange in tracer.aexchanges():`.

        A thread reads the ring buffer and hands batches of exchanges to the running loop, at most
        ASYNC_BATCHES ahead of the consumer; past that it waits, as the CLI waits for its output.
        Ends like exchanges(): stop() (e.g. from loop.add_signal_handler) or `timeout` seconds."""
        import asyncio

        if self._ring is None:
            raise RuntimeError("Tracer is not started: use it as a context manager")
        if self._reader is not None and self._reader[0].is_alive():
            raise RuntimeError("aexchanges() is already running on this tracer")
        loop = asyncio.get_running_loop()
        handed: asyncio.Queue[list[Exchange] | BaseException | None] = asyncio.Queue()
        slots = threading.Semaphore(ASYNC_BATCHES)
        cancel = threading.Event()
        thread = threading.Thread(target=self._read_for_loop, args=(loop, handed, slots, cancel, timeout),
                                  name="httptrace-reader", daemon=True)
        self._reader = (thread, cancel)
        thread.start()
        try:
            while True:
                item = await handed.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                slots.release()
                for exchange in item:
                    yield exchange
        finally:
            # Abandoned (break, cancellation) or done: the reader ends within a poll; wait for it
            # without blocking the loop, so that close() right after finds nothing running.
            cancel.set()
            while thread.is_alive():
                await asyncio.sleep(POLL_MS / 1000)
            if self._reader is not None and self._reader[0] is thread:
                self._reader = None

    def _read_for_loop(self, loop: asyncio.AbstractEventLoop,
                       handed: asyncio.Queue[list[Exchange] | BaseException | None],
                       slots: threading.Semaphore, cancel: threading.Event, timeout: float | None) -> None:
        """aexchanges()'s reader thread: exchange batches to the loop; then None, or the error raised."""
        last: BaseException | None = None
        try:
            for batch in self.exchange_batches(timeout):
                if cancel.is_set():
                    return
                if not batch:
                    continue
                while not slots.acquire(timeout=POLL_MS / 1000):
                    if cancel.is_set():
                        return
                loop.call_soon_threadsafe(handed.put_nowait, batch)
        except BaseException as exc:   # raised in the consumer, where someone can handle it
            last = exc
        try:
            loop.call_soon_threadsafe(handed.put_nowait, last)
        except RuntimeError:   # the loop is closed: nobody is waiting any more
            pass

    def _pump(self, timeout: float | None = None) -> Iterator[int]:
        """Poll the ring buffer until stop() or `timeout` s; yields the wall time after each wake-up."""
        if self._ring is None:
            raise RuntimeError("Tracer is not started: use it as a context manager")
        until = None if timeout is None else time.monotonic() + timeout
        next_sweep = time.monotonic() + SWEEP_EVERY_S
        ring = self._ring
        while not self._stopping and (until is None or time.monotonic() < until):
            self._decode(ring.poll(POLL_MS))
            if not ring.full:
                # Events submitted without a wake-up (see wakeup_bytes) are only found by looking.
                self._decode(ring.consume())
                self._caught_up = self._caught_up or not ring.full
            yield time.time_ns()
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_EVERY_S
                self._sweep_dead_processes()
                self._report_drops()
        deadline = time.monotonic() + DRAIN_SECONDS
        while True:  # the backlog, batch by batch, until the ring is empty
            self._decode(ring.consume())
            yield time.time_ns()
            if not ring.full:
                break
            if time.monotonic() > deadline:
                log.warning("stopped before the ring buffer was empty: its remaining events are not shown",
                            seconds=DRAIN_SECONDS)
                break

    # ---- housekeeping ---------------------------------------------------------------------------

    def _sweep_dead_processes(self) -> None:
        """A process that dies closes its sockets without close(): forget them here and in the kernel.

        In two steps: keys of dead processes found now are acted on at the next sweep, and only once the
        reader has caught up with the ring buffer in between, so the dead process's last events (still
        queued when it was found dead) are reassembled before its connections are closed."""
        if self._object is None:
            return
        conns = self._object.map("conns")
        if self._dead_keys and self._caught_up:
            for key in self._dead_keys:
                raw = conns.lookup(key, ctypes.sizeof(events.ConnInfo))
                conns.delete(key)
                if raw is None:
                    continue
                info = events.ConnInfo.from_buffer_copy(raw)
                if info.open_sent:
                    closed = events.CloseEvent()
                    closed.hdr.type, closed.hdr.conn = EventType.CLOSE, info.id
                    closed.hdr.ts_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    closed.bytes[0], closed.bytes[1] = info.pos[0], info.pos[1]
                    self._sink_close(closed)
            self._dead_keys = []
        if not self._dead_keys:
            self._dead_keys = [key for key in conns.keys(8)
                               if not os.path.exists(f"/proc/{_U64.unpack(key)[0] >> 32}")]
            self._caught_up = False

    def drops(self) -> dict[str, int]:
        """Events the kernel could not write to the ring buffer (it was full), by event type."""
        return self._counter_totals("drops", {kind.value: kind.name.lower() for kind in EventType})

    def skipped(self) -> dict[str, int]:
        """HTTP/1 messages the kernel skipped whole while the ring buffer was nearly full (the reader
        was behind): skipped_requests is the number of exchanges not captured; each request's
        response is skipped with it (skipped_responses). HTTP/2 is not skipped: its losses are drops."""
        return self._counter_totals("skipped",
                                    dict(enumerate(("skipped_requests", "skipped_responses"))))  # enum ht_skip

    def go_tls_errors(self) -> dict[str, int]:
        """Go TLS plaintext the kernel dropped: the conn led to no TCP socket of the process (bad_fd), or
        the program's struct offsets were missing (unknown_binary)."""
        return self._counter_totals("go_tls_errors",
                                    dict(enumerate(("go_tls_unknown_binary", "go_tls_bad_fd"))))  # enum ht_go_error

    def _counter_totals(self, map_name: str, names: dict[int, str]) -> dict[str, int]:
        """A per-CPU array of u64 counters, summed over the CPUs: {name: total} for each index in names."""
        if self._object is None:
            return {}
        counters = self._object.map(map_name)
        totals = {}
        for index, name in names.items():
            raw = counters.lookup(struct.pack("<I", index), 8 * self._ncpus) or b""
            totals[name] = sum(struct.unpack(f"<{len(raw) // 8}Q", raw))
        return totals

    def _report_drops(self) -> None:
        total = sum(self.drops().values())
        if total > self._last_drops:
            log.warning("ring buffer full: events dropped", dropped=total - self._last_drops, total=total,
                        hint="raise --ring-buffer-size, or filter with --port/--pid")
            self._last_drops = total
        skipped = self.skipped().get("skipped_requests", 0)
        if skipped > self._last_skipped:
            log.warning("overload: exchanges skipped whole, not captured", skipped=skipped - self._last_skipped,
                        total=skipped, hint="filter with --port/--pid, or raise --ring-buffer-size for bursts")
            self._last_skipped = skipped

    def stats(self) -> dict[str, int]:
        stats = dict(self._counts)
        stats["drops"] = sum(self.drops().values())
        stats.update(self.skipped())
        stats.update(self.go_tls_errors())
        if self._ring is not None and self._ring.oversized:   # never expected: the contract would be broken
            stats["oversized_events"] = self._ring.oversized
        if self._reassembler is not None:
            reassembler = dict(self._reassembler.stats)
            reassembler["connections_open"] = reassembler.pop("connections", 0)
            stats.update(reassembler)
        return stats


def _ring_size(size: int) -> int:
    """The ring buffer must be a power of two multiple of the page size: round up."""
    page = os.sysconf("SC_PAGE_SIZE")
    size = max(size, page)
    return 1 << (size - 1).bit_length()
