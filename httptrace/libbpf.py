"""Thin wrapper over the cffi module httptrace._libbpf: libbpf's calls as Python objects.

Every failure becomes a LibbpfError naming the step, errno and libbpf's message; libbpf's own log goes
to structlog. Objects, links and ring buffers are context managers and close exactly once.
"""
from __future__ import annotations

import errno as errno_names
import os
from typing import Any, Iterator

from ._libbpf import ffi, lib
from ._log import get_logger
from .errors import LibbpfError

log = get_logger("httptrace.libbpf")

BPF_MAP_TYPE_RINGBUF = 27


# ---- libbpf's log -> structlog ------------------------------------------------------------------

_LEVELS = {0: "warning", 1: "info", 2: "debug"}
_log_lines: list[str] = []  # warnings of the current load, quoted in the error if it fails


@ffi.def_extern()  # type: ignore[untyped-decorator]  # cffi has no types
def httptrace_on_log(level: int, line: Any) -> None:
    text = ffi.string(line).decode(errors="replace").rstrip()
    if not text:
        return
    if level == 0:
        _log_lines.append(text)
    getattr(log, _LEVELS.get(level, "debug"))("libbpf", line=text)


def set_libbpf_log_level(level: str) -> None:
    """Which of libbpf's own lines reach structlog: 'warning' (default), 'info' or 'debug'."""
    lib.httptrace_route_libbpf_log({"warning": 0, "info": 1, "debug": 2}.get(level, 0))


set_libbpf_log_level("warning")


def _error(step: str, err: int) -> LibbpfError:
    err = abs(err) or ffi.errno or errno_names.EINVAL
    buf = ffi.new("char[]", 256)
    lib.libbpf_strerror(err, buf, 256)
    message = ffi.string(buf).decode(errors="replace")
    return LibbpfError(step, err, message)


def _check(step: str, rc: int) -> int:
    if rc < 0:
        raise _error(step, rc)
    return rc


# ---- maps ---------------------------------------------------------------------------------------

class Map:
    """A map of a loaded object, addressed by fd; keys and values are bytes (or ctypes objects)."""

    def __init__(self, handle: Any, name: str):
        self._handle = handle
        self.name = name

    @property
    def fd(self) -> int:
        return _check(f"get fd of map {self.name}", lib.bpf_map__fd(self._handle))

    def set_max_entries(self, n: int) -> None:
        _check(f"resize map {self.name}", lib.bpf_map__set_max_entries(self._handle, n))

    def set_initial_value(self, data: bytes) -> None:
        _check(f"set initial value of map {self.name}",
               lib.bpf_map__set_initial_value(self._handle, data, len(data)))

    def initial_value_size(self) -> int:
        size = ffi.new("size_t *")
        if lib.bpf_map__initial_value(self._handle, size) == ffi.NULL:
            raise _error(f"read initial value of map {self.name}", 0)
        return int(size[0])

    def lookup(self, key: bytes, value_size: int) -> bytes | None:
        value = ffi.new("char[]", value_size)
        if lib.bpf_map_lookup_elem(self.fd, key, value) < 0:
            if ffi.errno == errno_names.ENOENT:
                return None
            raise _error(f"look up in map {self.name}", 0)
        return bytes(ffi.buffer(value, value_size)[:])

    def update(self, key: bytes, value: bytes) -> None:
        _check(f"update map {self.name}", lib.bpf_map_update_elem(self.fd, key, value, 0))

    def delete(self, key: bytes) -> bool:
        if lib.bpf_map_delete_elem(self.fd, key) < 0:
            if ffi.errno == errno_names.ENOENT:
                return False
            raise _error(f"delete from map {self.name}", 0)
        return True

    def keys(self, key_size: int) -> Iterator[bytes]:
        fd = self.fd
        key = ffi.NULL
        nxt = ffi.new("char[]", key_size)
        while lib.bpf_map_get_next_key(fd, key, nxt) == 0:
            current = ffi.buffer(nxt, key_size)[:]
            yield current
            key = ffi.new("char[]", current)


# ---- programs and links -------------------------------------------------------------------------

class Link:
    def __init__(self, handle: Any, program: str):
        self._handle = handle
        self.program = program

    def destroy(self) -> None:
        if self._handle is not None:
            lib.bpf_link__destroy(self._handle)
            self._handle = None


class Program:
    def __init__(self, handle: Any):
        self._handle = handle
        self.name = ffi.string(lib.bpf_program__name(handle)).decode()
        self.section = ffi.string(lib.bpf_program__section_name(handle)).decode()

    @property
    def autoload(self) -> bool:
        """Whether load() loads it: False from the start for programs declared SEC("?...")."""
        return bool(lib.bpf_program__autoload(self._handle))

    @autoload.setter
    def autoload(self, wanted: bool) -> None:
        _check(f"set autoload of program {self.name}", lib.bpf_program__set_autoload(self._handle, wanted))

    def attach(self) -> Link:
        link = lib.bpf_program__attach(self._handle)
        if link == ffi.NULL:
            raise _error(f"attach program {self.name} ({self.section})", 0)
        return Link(link, self.name)

    def attach_uprobe(self, binary: str, function: str, retprobe: bool = False) -> Link:
        """Probe `function` (by symbol) in `binary` for every process that maps it, now or later."""
        return self._attach_uprobe(binary, function, 0, retprobe)

    def attach_uprobe_at(self, binary: str, offset: int) -> Link:
        """Probe the instruction at file offset `offset` of `binary` (not a virtual address: for an
        ELF they differ by the segment's p_vaddr - p_offset)."""
        return self._attach_uprobe(binary, None, offset, False)

    def _attach_uprobe(self, binary: str, function: str | None, offset: int, retprobe: bool) -> Link:
        opts = ffi.new("struct bpf_uprobe_opts *")
        opts.sz = ffi.sizeof("struct bpf_uprobe_opts")
        opts.retprobe = retprobe
        name = ffi.new("char[]", function.encode()) if function else ffi.NULL
        opts.func_name = name
        link = lib.bpf_program__attach_uprobe_opts(self._handle, -1, binary.encode(), offset, opts)
        if link == ffi.NULL:
            kind = "uretprobe" if retprobe else "uprobe"
            raise _error(f"attach {kind} {self.name} to {binary}:{function or hex(offset)}", 0)
        return Link(link, self.name)


# ---- objects ------------------------------------------------------------------------------------

class BpfObject:
    """An eBPF object file: open, configure maps, load, attach every program; close undoes it all."""

    def __init__(self, path: str, btf_path: str | None = None):
        """btf_path: kernel BTF to relocate against, when not the running kernel's /sys/kernel/btf/vmlinux."""
        self.path = path
        self.links: list[Link] = []
        self._handle = None
        if not os.path.exists(path):
            raise LibbpfError(f"open BPF object {path}", errno_names.ENOENT, "no such file")
        opts = ffi.new("struct bpf_object_open_opts *")
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")
        keep_alive = ffi.new("char[]", btf_path.encode()) if btf_path else ffi.NULL
        opts.btf_custom_path = keep_alive
        self._handle = lib.bpf_object__open_file(path.encode(), opts)
        if self._handle == ffi.NULL:
            self._handle = None
            raise _error(f"open BPF object {path}", 0)

    def map(self, name: str) -> Map:
        handle = lib.bpf_object__find_map_by_name(self._handle, name.encode())
        if handle == ffi.NULL:
            raise LibbpfError(f"find map {name} in {self.path}", errno_names.ENOENT, "no such map")
        return Map(handle, name)

    def rodata(self) -> Map:
        """The .rodata map holding `const volatile` globals (libbpf names it '<obj[:8]>.rodata')."""
        stem = os.path.basename(self.path).split(".")[0][:8]
        return self.map(f"{stem}.rodata")

    def programs(self) -> list[Program]:
        programs: list[Program] = []
        prog = ffi.NULL
        while True:
            prog = lib.bpf_object__next_program(self._handle, prog)
            if prog == ffi.NULL:
                return programs
            programs.append(Program(prog))

    def load(self) -> None:
        _log_lines.clear()
        rc = lib.bpf_object__load(self._handle)
        if rc < 0:
            err = _error(f"load {os.path.basename(self.path)}", rc)
            # The verifier's last words say why; keep them with the error.
            err.verifier_log = list(_log_lines)
            raise err

    def program(self, name: str) -> Program:
        for program in self.programs():
            if program.name == name:
                return program
        raise LibbpfError(f"find program {name} in {self.path}", errno_names.ENOENT, "no such program")

    def attach_tracepoints(self) -> list[Link]:
        """Attach every loaded tracepoint program (their sections name their targets); probes are attached
        by name. Syscall exits come before entries: an entry that stashes arguments for an exit not yet
        attached would leave them for the next, unrelated exit of that thread."""
        programs = [p for p in self.programs() if p.section.startswith("tracepoint/") and p.autoload]
        for program in sorted(programs, key=lambda p: "/sys_enter_" in p.section):
            self.links.append(program.attach())
        return self.links

    def close(self) -> None:
        for link in reversed(self.links):
            link.destroy()
        self.links.clear()
        if self._handle is not None:
            lib.bpf_object__close(self._handle)
            self._handle = None

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- ring buffer --------------------------------------------------------------------------------

class RingBuffer:
    """Drains one BPF_MAP_TYPE_RINGBUF map in batches.

    libbpf hands each sample to a C function of the cffi module that copies it into a batch buffer;
    poll()/consume() return the batch as (buffer, count) for Python to read: one call from Python
    into C per batch instead of one from C into Python per event (that was ~13% of the agent's CPU).
    A batch ends after `max_count` samples or when the buffer could not take one more of
    `max_sample` bytes; `full` then says the ring may hold more.  Each record in the buffer is a
    u32 size, 4 bytes of padding and the sample, padded to 8 bytes (Tracer._decode reads them)."""

    def __init__(self, ring_map: Map, *, max_sample: int, max_count: int = 4096, batch_bytes: int = 4 << 20):
        room = 8 + ((max_sample + 7) & ~7)
        if batch_bytes < room:
            raise ValueError(f"batch of {batch_bytes} bytes cannot hold one sample of {max_sample}")
        self._buf = ffi.new("unsigned char[]", batch_bytes)
        self._batch = batch = ffi.new("struct httptrace_batch *")
        batch.buf, batch.capacity, batch.max_count, batch.room = self._buf, batch_bytes, max_count, room
        self.full = False
        self._handle = lib.ring_buffer__new(ring_map.fd, ffi.addressof(lib, "httptrace_batch_sample"), batch,
                                            ffi.NULL)
        if self._handle == ffi.NULL:
            self._handle = None
            raise _error("create ring buffer", 0)

    @property
    def oversized(self) -> int:
        """Samples lost because they were larger than `max_sample` (a contract mismatch)."""
        return int(self._batch.oversized)

    def _take(self, rc: int, step: str) -> tuple[Any, int]:
        batch = self._batch
        self.full = rc == -errno_names.EAGAIN
        if rc < 0 and not self.full and rc != -errno_names.EINTR:   # a signal is a clean wake-up
            raise _error(step, rc)
        records = ffi.buffer(self._buf, batch.used), batch.count
        batch.used = batch.count = 0
        return records

    def poll(self, timeout_ms: int) -> tuple[Any, int]:
        """Wait up to timeout_ms for data, then take a batch of what is there: (buffer, samples)."""
        return self._take(lib.ring_buffer__poll(self._handle, timeout_ms), "poll ring buffer")

    def consume(self) -> tuple[Any, int]:
        """Take a batch of what is there now, without waiting."""
        return self._take(lib.ring_buffer__consume(self._handle), "consume ring buffer")

    def close(self) -> None:
        if self._handle is not None:
            lib.ring_buffer__free(self._handle)
            self._handle = None

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def num_possible_cpus() -> int:
    return _check("count possible CPUs", lib.libbpf_num_possible_cpus())


def ring_buffer_supported() -> bool:
    return bool(lib.libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, ffi.NULL) == 1)


BPF_PROG_TYPE_TRACEPOINT = 5


def helper_supported(helper_id: int) -> bool:
    """Whether tracepoint programs may call this helper (enum bpf_func_id). Probed as a tracepoint
    program: libbpf cannot probe helpers of tracing (fentry, tp_btf) programs."""
    return bool(lib.libbpf_probe_bpf_helper(BPF_PROG_TYPE_TRACEPOINT, helper_id, ffi.NULL) == 1)
