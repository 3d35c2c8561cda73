"""Just enough of a BTF reader to compare struct layouts: sizes and member offsets by name.

BTF (the kernel's type format) lives in the object's .BTF section; pyelftools finds the section, this
walks the type records. Format: Documentation/bpf/btf.rst.
"""
from __future__ import annotations

import struct

from elftools.elf.elffile import ELFFile

KIND_STRUCT, KIND_UNION = 4, 5
# Bytes that follow the 12-byte common record, by kind: fixed extra, and per-vlen item size.
_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12),
          17: (4, 0), 19: (0, 12)}


def struct_layouts(object_path: str) -> dict[str, tuple[int, dict[str, int]]]:
    """name -> (size in bytes, {member name: byte offset}) for every named struct in the object."""
    with open(object_path, "rb") as f:
        section = ELFFile(f).get_section_by_name(".BTF")
        if section is None:
            raise ValueError(f"{object_path} has no .BTF section (built without -g?)")
        data = section.data()
    magic, _version, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from("<HBBIIIII", data)
    if magic != 0xEB9F:
        raise ValueError("not little-endian BTF")
    types_at, strings_at = hdr_len + type_off, hdr_len + str_off

    def name(off: int) -> str:
        end = data.index(b"\0", strings_at + off)
        return data[strings_at + off:end].decode()

    layouts = {}
    at, end = types_at, types_at + type_len
    while at < end:
        name_off, info, size = struct.unpack_from("<III", data, at)
        kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        at += 12
        if kind in (KIND_STRUCT, KIND_UNION) and name_off:
            members = {}
            for i in range(vlen):
                m_name, _m_type, m_offset = struct.unpack_from("<III", data, at + 12 * i)
                bits = m_offset & 0xFFFFFF if kind_flag else m_offset
                members[name(m_name)] = bits // 8
            layouts[name(name_off)] = (size, members)
        fixed, per_item = _EXTRA.get(kind, (0, 0))
        at += fixed + per_item * vlen
    return layouts
