"""Go executables as files: is it Go, which version, where are its functions (also when stripped).

Reads only the file (mmap), never the process: the build info blob (`.go.buildinfo`) for the version,
then `.symtab` or, in binaries linked with `-s -w`, Go's own function table `pclntab`, which every Go
binary keeps because the runtime needs it for stack traces. Addresses here are the ELF's virtual
addresses; `file_offset()` turns them into what an uprobe is attached at.

The layouts are Go's (`runtime/symtab.go`, `cmd/link/internal/ld/pcln.go`, `debug/buildinfo`); this is
written from those descriptions, for little-endian 64-bit ELF (x86-64 and arm64: nothing read here
differs between them).
"""
from __future__ import annotations

import bisect
import mmap
import re
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

BUILDINFO_MAGIC = b"\xff Go buildinf:"
# pclntab magic -> the first Go version that wrote that layout.
PCLNTAB_MAGICS = {0xFFFFFFF1: (1, 20), 0xFFFFFFF0: (1, 18), 0xFFFFFFFA: (1, 16), 0xFFFFFFFB: (1, 2)}
EM_X86_64 = 62
EM_AARCH64 = 183
PF_X = 1
PF_W = 2
PT_LOAD = 1
SHT_NOBITS = 8
STT_FUNC = 2

_U32 = struct.Struct("<I")


def find(image: "mmap.mmap", sub: bytes, start: int = 0, end: Optional[int] = None) -> int:
    """image.find(sub, start, end), without mmap.find: before CPython 3.11.5 (Debian 12 ships 3.11.2,
    Debian 11 3.9.2) it reads past the mapping's end and crashes on files whose size is a page multiple
    (gh-105235; measured here on a Go test binary). Searches bytes copies of 1 MiB pieces instead."""
    end = len(image) if end is None else min(end, len(image))
    at, step, overlap = max(0, start), 1 << 20, len(sub) - 1
    while at < end:
        stop = min(end, at + step + overlap)
        hit = image[at:stop].find(sub)
        if hit >= 0:
            return at + hit
        at += step
    return -1
_U64 = struct.Struct("<Q")
_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym: name, info, other, shndx, value, size
_VERSION = re.compile(rb"go(\d+)\.(\d+)")


class NotGo(Exception):
    """Not a Go executable (or not one this module can read); the message says why."""


@dataclass(frozen=True)
class Function:
    name: str
    start: int   # virtual address of the first instruction
    end: int     # virtual address just past the function (the next function's start, or st_size)


@dataclass(frozen=True)
class _Section:
    name: str
    addr: int
    offset: int
    size: int


@dataclass(frozen=True)
class _Segment:
    vaddr: int
    offset: int
    filesz: int
    flags: int


def parse_version(text: str) -> Optional[Tuple[int, int]]:
    """"go1.19.8" -> (1, 19); "devel go1.22-abc" -> (1, 22); None if there is no goX.Y in it."""
    found = _VERSION.search(text.encode())
    return (int(found.group(1)), int(found.group(2))) if found else None


def _uvarint(data: bytes, at: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise NotGo("bad varint in the build info")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


class GoBinary:
    """One ELF file, mapped read-only. Raises NotGo from the constructor when it is no Go program."""

    def __init__(self, path: str):
        self.path = path
        self._image: Optional[mmap.mmap] = None
        self._pclntab: Optional[Pclntab] = None
        with open(path, "rb") as f:
            try:
                self._image = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:   # empty
                raise NotGo("empty file") from None
        try:
            self._read_headers()
            self.version = self._build_version()
        except (struct.error, IndexError, ValueError, OverflowError) as exc:   # truncated or malformed
            self.close()
            raise NotGo(f"malformed ELF: {exc}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None

    def __enter__(self) -> "GoBinary":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- ELF headers -------------------------------------------------------------------------

    def _read_headers(self) -> None:
        img = self.image
        if img[:4] != b"\x7fELF":
            raise NotGo("not an ELF file")
        if img[4] != 2 or img[5] != 1:
            raise NotGo("not a little-endian 64-bit ELF")
        (e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize, e_shnum,
         e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", img, 16)
        self.machine = e_machine
        self.pie = e_type == 3   # ET_DYN: Go 1.19 does not write -buildmode to the build info
        self.segments: List[_Segment] = []
        for i in range(e_phnum):
            p_type, p_flags, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", img, e_phoff + i * e_phentsize)
            if p_type == PT_LOAD:
                self.segments.append(_Segment(p_vaddr, p_offset, p_filesz, p_flags))
        headers = [struct.unpack_from("<IIQQQQ", img, e_shoff + i * e_shentsize) for i in range(e_shnum)]
        self.sections: Dict[str, _Section] = {}
        if e_shstrndx < len(headers):
            names_at = headers[e_shstrndx][4]
            for sh_name, sh_type, _, sh_addr, sh_offset, sh_size in headers:
                end = find(img, b"\0", names_at + sh_name)
                name = img[names_at + sh_name:end].decode(errors="replace")
                if sh_type != SHT_NOBITS and sh_offset + sh_size <= len(img):
                    self.sections.setdefault(name, _Section(name, sh_addr, sh_offset, sh_size))

    def section_bytes(self, name: str) -> Optional[bytes]:
        s = self.sections.get(name)
        return self.image[s.offset:s.offset + s.size] if s else None

    def read(self, vaddr: int, size: int) -> bytes:
        """`size` bytes at a virtual address, from the file image of the segment holding them."""
        for seg in self.segments:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                at = vaddr - seg.vaddr + seg.offset
                return self.image[at:at + size]
        raise NotGo(f"address {vaddr:#x} is not in the file")

    def file_offset(self, vaddr: int) -> int:
        """Where an uprobe on the instruction at `vaddr` goes: its offset in the file, through the
        executable PT_LOAD (vaddr - p_vaddr + p_offset). Differs from vaddr in PIEs and non-PIEs alike."""
        for seg in self.segments:
            if seg.flags & PF_X and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        raise NotGo(f"address {vaddr:#x} is not in an executable segment")

    # ---- version -----------------------------------------------------------------------------

    def _buildinfo(self) -> bytes:
        s = self.sections.get(".go.buildinfo")
        if s is not None and self.image[s.offset:s.offset + 14] == BUILDINFO_MAGIC:
            return self.image[s.offset:s.offset + min(s.size, 4096)]
        # No section headers to go by: the blob is at a 16-byte boundary of the first writable segment.
        img = self.image
        for seg in self.segments:
            if seg.flags & PF_W:
                at = find(img, BUILDINFO_MAGIC, seg.offset, seg.offset + seg.filesz)
                while at >= 0 and (at - seg.offset) % 16:
                    at = find(img, BUILDINFO_MAGIC, at + 1, seg.offset + seg.filesz)
                if at >= 0:
                    return img[at:min(at + 4096, seg.offset + seg.filesz)]
                break
        raise NotGo("no Go build info")

    def _build_version(self) -> str:
        blob = self._buildinfo()
        if len(blob) < 32:
            raise NotGo("truncated Go build info")
        ptr_size, flags = blob[14], blob[15]
        if flags & 2:   # Go 1.18+: the strings follow the header, each prefixed by its varint length
            n, at = _uvarint(blob, 32)
            return blob[at:at + n].decode(errors="replace")
        if ptr_size != 8 or flags & 1:
            raise NotGo("unsupported build info layout (not 64-bit little-endian)")
        # Go 1.13-1.17: pointers to Go string headers (data pointer, length).
        header_at = _U64.unpack_from(blob, 16)[0]
        data, length = struct.unpack("<QQ", self.read(header_at, 16))
        if length > 256:
            raise NotGo("implausible Go version string")
        return self.read(data, length).decode(errors="replace")

    @property
    def go_version(self) -> Optional[Tuple[int, int]]:
        return parse_version(self.version)

    # ---- functions ---------------------------------------------------------------------------

    def functions(self, names: List[str]) -> Dict[str, Function]:
        """The functions of `names` that exist: from .symtab when there is one, else from pclntab."""
        found = self.symtab_functions(names)
        if found is None:
            found = self.pclntab_functions(names)
        return found

    def symtab_functions(self, names: List[str]) -> Optional[Dict[str, Function]]:
        """From the ELF symbol table, or None when the binary has none (-s)."""
        if ".symtab" not in self.sections or ".strtab" not in self.sections:
            return None
        found = {}
        for name in names:
            best = None
            for sym in self._symbols_named(name):
                _, info, _, shndx, value, size = sym
                if info & 0xF == STT_FUNC and shndx and value and (best is None or size > best[5]):
                    best = sym   # a name may repeat (ABI wrappers): the largest is the Go function
            if best is not None:
                found[name] = Function(name, best[4], best[4] + best[5])
        return found

    def symbol_value(self, name: str) -> Optional[int]:
        if ".symtab" not in self.sections or ".strtab" not in self.sections:
            return None
        values = [sym[4] for sym in self._symbols_named(name) if sym[3]]
        return values[0] if values else None

    def _symbols_named(self, name: str) -> Iterator[Tuple[int, int, int, int, int, int]]:
        """Symbols whose name is `name`: the name's offset in .strtab, then the 4-byte st_name fields
        equal to it (a byte search in C, not a walk over tens of thousands of symbols in Python)."""
        img, symtab, strtab = self.image, self.sections[".symtab"], self.sections[".strtab"]
        s_end, t_end = strtab.offset + strtab.size, symtab.offset + symtab.size
        wanted = b"\0" + name.encode() + b"\0"
        at = find(img, wanted, strtab.offset, s_end)
        while at >= 0:
            key = _U32.pack(at + 1 - strtab.offset)
            hit = find(img, key, symtab.offset, t_end)
            while hit >= 0:
                if (hit - symtab.offset) % _SYM.size == 0:
                    yield _SYM.unpack_from(img, hit)
                hit = find(img, key, hit + 1, t_end)
            at = find(img, wanted, at + 1, s_end)

    def pclntab_functions(self, names: List[str]) -> Dict[str, Function]:
        return self.pclntab().functions(names)

    def pclntab(self) -> "Pclntab":
        if self._pclntab is None:
            self._pclntab = Pclntab.locate(self)
        return self._pclntab

    @property
    def image(self) -> mmap.mmap:
        if self._image is None:
            raise ValueError("closed")
        return self._image

    def text_base(self) -> int:
        """Where the functions' offsets in pclntab count from: runtime.text, else pclntab's textStart,
        else .text. Measured: in an externally linked PIE, .text starts 0x100 bytes before runtime.text."""
        value = self.symbol_value("runtime.text")
        if value:
            return value
        start = self.pclntab().text_start
        if start:
            return start
        text = self.sections.get(".text")
        if text is None:
            raise NotGo("no text base: no runtime.text, textStart or .text")
        return text.addr


class Pclntab:
    """Go's function table: entry offsets sorted by address, each with a _func record naming it."""

    def __init__(self, binary: GoBinary, at: int, vaddr: int):
        self.binary = binary
        self.at = at          # file offset of the header
        self.vaddr = vaddr    # its virtual address
        img = binary.image
        magic = _U32.unpack_from(img, at)[0]
        layout = PCLNTAB_MAGICS.get(magic)
        if layout is None or layout < (1, 16):
            raise NotGo(f"pclntab layout {magic:#x} is too old (Go < 1.16)")
        self.layout: Tuple[int, int] = layout
        if img[at + 7] != 8:
            raise NotGo("pclntab is not 64-bit")
        words: Tuple[int, ...] = struct.unpack_from("<8Q", img, at + 8)
        self.nfunc = words[0]
        if self.layout >= (1, 18):
            # nfunc, nfiles, textStart, funcnametab, cutab, filetab, pctab, pclntab (functab + _func)
            self.text_start, names_off, functab_off = words[2], words[3], words[7]
            self._entry_size = 4    # functab entries: (u32 entryOff from textStart, u32 funcOff)
        else:
            # nfunc, nfiles, funcnametab, cutab, filetab, pctab, pclntab
            self.text_start, names_off, functab_off = 0, words[2], words[6]
            self._entry_size = 8    # (uintptr entry PC, uintptr funcOff)
        self.names_at = at + names_off
        self.functab_at = at + functab_off
        end = self.functab_at + (self.nfunc + 1) * 2 * self._entry_size
        if not 0 < self.nfunc < 10_000_000 or end > len(img) or self.names_at >= end:
            raise NotGo("pclntab header out of bounds")
        # A copy (tens to hundreds of KiB): a view would pin the mmap open.
        self._entries = memoryview(img[self.functab_at:end]).cast("I" if self._entry_size == 4 else "Q")
        self._starts = self._entries[0::2]   # sorted: bisect works on it

    @classmethod
    def locate(cls, binary: GoBinary) -> "Pclntab":
        """.gopclntab, .data.rel.ro.gopclntab (PIE), or by its magic inside .data.rel.ro (an externally
        linked stripped PIE has no section of its own for it)."""
        for name in (".gopclntab", ".data.rel.ro.gopclntab"):
            s = binary.sections.get(name)
            if s is not None:
                return cls(binary, s.offset, s.addr)
        img = binary.image
        for name in (".data.rel.ro", ".rodata"):
            s = binary.sections.get(name)
            if s is None:
                continue
            for magic in PCLNTAB_MAGICS:
                at = find(img, _U32.pack(magic) + b"\0\0", s.offset, s.offset + s.size)
                while at >= 0:
                    if img[at + 6] in (1, 2, 4) and img[at + 7] == 8:   # minLC, ptrSize: a real header
                        try:
                            return cls(binary, at, s.addr + at - s.offset)
                        except NotGo:
                            pass
                    at = find(img, _U32.pack(magic) + b"\0\0", at + 1, s.offset + s.size)
        raise NotGo("no pclntab")

    def _name_offsets(self, name: str) -> List[int]:
        img, wanted = self.binary.image, name.encode() + b"\0"
        offsets, at = [], find(img, b"\0" + wanted, self.names_at - 1, self.functab_at)
        while at >= 0:
            offsets.append(at + 1 - self.names_at)
            at = find(img, b"\0" + wanted, at + 1, self.functab_at)
        return offsets

    def functions(self, names: List[str]) -> Dict[str, Function]:
        """By name: the name's offset in funcnametab, then the _func records that point at it (found by
        searching for that offset, each checked against functab), not a walk over every function."""
        img = self.binary.image
        found = {}
        base = self.binary.text_base() if self.layout >= (1, 18) else 0
        name_field = 4 if self._entry_size == 4 else 8   # _func: entry (u32 | uintptr), then nameOff (i32)
        for name in names:
            best = None
            for name_off in self._name_offsets(name):
                key = struct.pack("<i", name_off)
                hit = find(img, key, self.functab_at, len(img))
                while hit >= 0:
                    index = self._check_func(hit - name_field)
                    if index is not None:
                        start = base + self._starts[index]
                        end = base + self._starts[index + 1]
                        if best is None or end - start > best.end - best.start:
                            best = Function(name, start, end)
                    hit = find(img, key, hit + 1, len(img))
            if best is not None:
                found[name] = best
        return found

    def _check_func(self, func_at: int) -> Optional[int]:
        """The functab index whose _func record is at file offset `func_at`, or None (a false hit)."""
        if func_at < self.functab_at:
            return None
        img = self.binary.image
        entry = (_U32 if self._entry_size == 4 else _U64).unpack_from(img, func_at)[0]
        index = bisect.bisect_left(self._starts, entry)
        while index < self.nfunc and self._starts[index] == entry:
            if self.functab_at + self._entries[2 * index + 1] == func_at:
                return index
            index += 1
        return None
