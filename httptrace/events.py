"""ctypes mirrors of bpf/httptrace.h, and the decoded events user space hands on.

The C header is the single source of truth; tests/unit/test_contract.py reads the BTF of the built
object and fails if a size or an offset here drifts from it.
"""
from __future__ import annotations

import ctypes
import enum
import ipaddress
import struct
from dataclasses import dataclass

COMM_LEN = 16
CHUNK_SIZE = 32 * 1024
AF_INET = 2
AF_INET6 = 10


class EventType(enum.IntEnum):
    OPEN = 1
    DATA = 2
    CLOSE = 3


class Direction(enum.IntEnum):
    EGRESS = 0   # the traced process wrote these bytes
    INGRESS = 1  # the traced process read these bytes


class RoleHint(enum.IntEnum):
    UNKNOWN = 0
    SERVER = 1
    CLIENT = 2


class DataFlags(enum.IntFlag):
    NOT_VISIBLE = 1
    TLS = 2


class ConnId(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("fd", ctypes.c_int32), ("tsid", ctypes.c_uint64)]


class EventHeader(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("_pad0", ctypes.c_uint32), ("ts_ns", ctypes.c_uint64),
                ("conn", ConnId)]


class OpenEvent(ctypes.Structure):
    _fields_ = [("hdr", EventHeader), ("family", ctypes.c_uint16), ("local_port", ctypes.c_uint16),
                ("remote_port", ctypes.c_uint16), ("role_hint", ctypes.c_uint8), ("tls", ctypes.c_uint8),
                ("local_addr", ctypes.c_uint8 * 16), ("remote_addr", ctypes.c_uint8 * 16),
                ("comm", ctypes.c_char * COMM_LEN), ("cgroup_id", ctypes.c_uint64)]


class DataEventHead(ctypes.Structure):
    """struct ht_data_event without its data[] array: the kernel sends only `len` bytes of it."""

    _fields_ = [("hdr", EventHeader), ("pos", ctypes.c_uint64), ("len", ctypes.c_uint32),
                ("not_copied", ctypes.c_uint32), ("direction", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("_pad0", ctypes.c_uint8 * 6)]


class DataEvent(ctypes.Structure):
    _fields_ = DataEventHead._fields_ + [("data", ctypes.c_uint8 * CHUNK_SIZE)]


class CloseEvent(ctypes.Structure):
    _fields_ = [("hdr", EventHeader), ("bytes", ctypes.c_uint64 * 2)]


class ConnInfo(ctypes.Structure):
    _fields_ = [("id", ConnId), ("pos", ctypes.c_uint64 * 2), ("sk", ctypes.c_uint64), ("state", ctypes.c_uint8),
                ("role_hint", ctypes.c_uint8), ("open_sent", ctypes.c_uint8), ("tries", ctypes.c_uint8),
                ("tls", ctypes.c_uint8), ("http1", ctypes.c_uint8), ("skipping", ctypes.c_uint8),
                ("_pad0", ctypes.c_uint8), ("responses_to_skip", ctypes.c_uint32), ("_pad1", ctypes.c_uint32)]


class Config(ctypes.Structure):
    _fields_ = [("self_tgid", ctypes.c_uint32), ("filter_tgids", ctypes.c_uint32),
                ("filter_ports", ctypes.c_uint32), ("filter_comm", ctypes.c_uint32),
                ("tls", ctypes.c_uint32), ("_pad0", ctypes.c_uint32), ("max_copy", ctypes.c_uint64),
                ("wakeup_bytes", ctypes.c_uint64), ("shed_bytes", ctypes.c_uint64), ("comm", ctypes.c_char * COMM_LEN)]


class GoOffsets(ctypes.Structure):
    """Value of go_offsets: from a crypto/tls.Conn to its socket's fd, in that program's build."""
    _fields_ = [("conn", ctypes.c_uint32), ("tcpconn_fd", ctypes.c_uint32), ("netfd_sysfd", ctypes.c_uint32),
                ("netfd_family", ctypes.c_uint32), ("netfd_sotype", ctypes.c_uint32),
                ("read_args_spilled", ctypes.c_uint32)]


# C struct name -> mirror, for the contract test.
MIRRORS = {
    "ht_conn_id": ConnId,
    "ht_event_header": EventHeader,
    "ht_open_event": OpenEvent,
    "ht_data_event": DataEvent,
    "ht_close_event": CloseEvent,
    "ht_conn_info": ConnInfo,
    "ht_config": Config,
    "ht_go_offsets": GoOffsets,
}

DATA_OFFSET = ctypes.sizeof(DataEventHead)

_STRUCT_CODES: dict[type, str] = {ctypes.c_uint8: "B", ctypes.c_uint16: "H", ctypes.c_uint32: "I", ctypes.c_int32: "i",
                 ctypes.c_uint64: "Q"}


def flat_struct(mirror: type[ctypes.Structure]) -> struct.Struct:
    """A struct.Struct reading `mirror` as one flat tuple (nested structs inlined, byte arrays as bytes).

    The hot path decodes with this (one C call, no ctypes object per event); it is derived from the
    ctypes mirror, which the contract test checks against the object's BTF."""
    def codes(cls: type[ctypes.Structure]) -> str:
        out = ""
        for field in cls._fields_:   # (name, type) or, for bit fields, (name, type, bits)
            ftype = field[1]
            if isinstance(ftype, type) and issubclass(ftype, ctypes.Structure):
                out += codes(ftype)
            elif isinstance(ftype, type) and issubclass(ftype, ctypes.Array):
                out += f"{ftype._length_}s"
            else:
                out += _STRUCT_CODES[ftype]
        return out

    flat = struct.Struct("<" + codes(mirror))
    assert flat.size == ctypes.sizeof(mirror), f"{mirror.__name__} has implicit padding"
    return flat


# type, _pad0, ts_ns, tgid, fd, tsid, pos, len, not_copied, direction, flags, _pad0
DATA_HEAD = flat_struct(DataEventHead)


def address(family: int, raw: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    v6 = ipaddress.IPv6Address(bytes(raw))
    if v6.ipv4_mapped:  # the way people write it (Python 3.11 would print ::ffff:7f00:1)
        return f"::ffff:{v6.ipv4_mapped}"
    return str(v6)


# ---- decoded events: what Tracer.events() yields -------------------------------------------------

@dataclass(frozen=True)
class Open:
    conn: tuple[int, int, int]   # (pid, fd, tsid)
    ts_ns: int                   # wall clock
    comm: str
    local: tuple[str, int]
    remote: tuple[str, int]
    role_hint: RoleHint
    tls: bool
    cgroup_id: int = 0           # the process's cgroup v2 id (inode of its directory), 0 if unknown


@dataclass(frozen=True)
class Data:
    conn: tuple[int, int, int]
    ts_ns: int
    direction: Direction
    pos: int
    payload: bytes
    not_copied: int
    flags: DataFlags


@dataclass(frozen=True)
class Close:
    conn: tuple[int, int, int]
    ts_ns: int
    bytes_sent: int
    bytes_received: int
