"""The ctypes mirrors in httptrace/events.py must match bpf/httptrace.h as compiled (the object's BTF)."""
import ctypes
import os

import pytest

from httptrace import events
from httptrace.checks import object_path

from .btf_reader import struct_layouts


@pytest.fixture(scope="module")
def layouts():
    path = object_path()
    assert os.path.exists(path), f"{path} missing: run `make build` first"
    return struct_layouts(path)


def mismatches(mirror, layout) -> list[str]:
    size, members = layout
    found = []
    if ctypes.sizeof(mirror) != size:
        found.append(f"size {ctypes.sizeof(mirror)} != {size}")
    mirrored = {name: getattr(mirror, name).offset for name, *_ in mirror._fields_}
    for name in sorted(set(mirrored) | set(members)):
        if mirrored.get(name) != members.get(name):
            found.append(f"{name}: mirror at {mirrored.get(name)}, C at {members.get(name)}")
    return found


@pytest.mark.parametrize("c_name", sorted(events.MIRRORS))
def test_mirror_matches_btf(layouts, c_name):
    assert c_name in layouts, f"struct {c_name} is not in the object's BTF: reference it from a global"
    assert mismatches(events.MIRRORS[c_name], layouts[c_name]) == []


def test_payload_offset_is_where_the_kernel_puts_data(layouts):
    assert events.DATA_OFFSET == layouts["ht_data_event"][1]["data"]


def test_a_drifted_mirror_is_caught(layouts):
    class DriftedClose(ctypes.Structure):  # a field widened in the mirror only
        _fields_ = [("hdr", events.EventHeader), ("_extra", ctypes.c_uint32), ("bytes", ctypes.c_uint64 * 2)]

    found = mismatches(DriftedClose, layouts["ht_close_event"])
    assert any(line.startswith("size") for line in found)
    assert any(line.startswith("bytes:") for line in found)


def test_hot_path_decoder_reads_what_ctypes_reads():
    """events.DATA_HEAD (struct, used per event) and the ctypes mirror agree field by field."""
    head = events.DataEventHead()
    head.hdr.type, head.hdr.ts_ns = events.EventType.DATA, 123456789
    head.hdr.conn.tgid, head.hdr.conn.fd, head.hdr.conn.tsid = 4242, -7, 99
    head.pos, head.len, head.not_copied, head.direction, head.flags = 1 << 40, 512, 3, 1, 2
    assert events.DATA_HEAD.unpack(bytes(head)) == (
        events.EventType.DATA, 0, 123456789, 4242, -7, 99, 1 << 40, 512, 3, 1, 2, bytes(6))
