"""Go's crypto/tls: plaintext from Go programs, which do not use OpenSSL.

For each Go executable (Go >= 1.17, the register ABI) of this machine's CPU (x86-64 or arm64) that links
crypto/tls:
  - find crypto/tls.(*Conn).Write and .Read (goelf: .symtab, else pclntab, so stripped builds too);
  - disassemble each (capstone) and probe its entry and every RET instruction (Write is reported at
    its entry, Read at its RETs: bpf/httptrace.bpf.c says why). Never a uretprobe: it
    rewrites the return address on a goroutine stack, which Go copies and walks, and the program
    crashes. Never a byte scan for 0xC3 either: on x86-64 that byte also occurs inside other
    instructions (`48 ff c3` is inc rbx), and an int3 there changes the instruction. arm64
    instructions are 4 bytes each, and Go returns with the one `ret` (through x30), but the
    function is decoded whole there too: a word that is no instruction means it is not probed;
  - tell the kernel where the socket fd sits behind a *tls.Conn in this build: from DWARF when the
    binary has it, else from the offsets every Go release 1.17-1.24 uses. The kernel checks the fd
    it finds is a TCP stream socket of that process before using it (bpf/httptrace.bpf.c, go_conn_fd).
Probes are attached at file offsets, to the file itself: they cover every process running it.
"""
from __future__ import annotations

import os
import platform
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from . import events
from ._log import get_logger
from .goelf import EM_AARCH64, EM_X86_64, Function, GoBinary, NotGo

if TYPE_CHECKING:
    from .libbpf import BpfObject

log = get_logger("httptrace.gotls")

# ELF machine -> its name; the probes' programs read that CPU's registers (bpf/arch.h), so only Go
# programs of this machine's CPU are probed.
MACHINES = {EM_X86_64: "x86-64", EM_AARCH64: "arm64"}
HOST_MACHINE = {"x86_64": EM_X86_64, "aarch64": EM_AARCH64}.get(platform.machine())
# The register ABI: amd64 from Go 1.17, arm64 from 1.18; older Go passes arguments on the stack.
MIN_VERSIONS = {EM_X86_64: (1, 17), EM_AARCH64: (1, 18)}
WRITE, READ = "crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read"
# function -> (entry program, RET program); "{}" is the family's prefix ("" or "compat_"): Write
# reports at its entry, Read at its RETs.
PROGRAMS = {WRITE: ("{}go_write_enter", "go_write_ret"), READ: ("go_read_enter", "{}go_read_ret")}
MAX_BINARY_SIZE = 1 << 30

# Byte offsets from a *tls.Conn to its socket (see struct ht_go_offsets): tls.Conn.conn at 0, the
# *net.TCPConn's conn.fd at 0, netFD.pfd at 0 and pfd.Sysfd at 16, netFD.family 56, .sotype 64. Read
# from Go 1.19's DWARF here (tests/unit/test_goelf.py); published offset tables for 1.17-1.24 give the
# same conn, fd, pfd and Sysfd and netFD.laddr at 96 in every release, so the fields before it stand.
DEFAULT_OFFSETS = {"conn": 0, "tcpconn_fd": 0, "netfd_sysfd": 16, "netfd_family": 56, "netfd_sotype": 64}
KNOWN_VERSIONS = {(1, minor): DEFAULT_OFFSETS for minor in range(17, 25)}

# The DWARF structs and members those offsets are sums of.
_DWARF_MEMBERS = {
    "crypto/tls.Conn": ("conn",), "net.TCPConn": ("conn",), "net.conn": ("fd",),
    "net.netFD": ("pfd", "family", "sotype"), "internal/poll.FD": ("Sysfd",),
}


class Unsupported(Exception):
    """A Go program that is not probed; the message says why."""


class DecodeError(Exception):
    pass


def _disassembler(machine: int) -> Any:
    import capstone  # type: ignore[import-untyped]  # imported here: only Go programs need it

    if machine == EM_AARCH64:
        return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def find_returns(code: bytes, address: int, machine: int = EM_X86_64) -> List[int]:
    """Addresses of the RET instructions in `code` (a function's bytes, loaded at `address`), by
    decoding every instruction from the first. Raises DecodeError if any byte does not decode: a
    probe in the middle of an instruction would corrupt it."""
    md = _disassembler(machine)
    returns, decoded = [], 0
    for at, size, mnemonic, _ in md.disasm_lite(code, address):
        decoded += size
        if mnemonic.split()[-1] in ("ret", "retq"):   # also "repz ret", "bnd ret"; arm64: "ret" (x30)
            returns.append(at)
    if decoded != len(code):
        raise DecodeError(f"undecodable instruction at {address + decoded:#x}")
    return returns


_STORE = re.compile(r"qword ptr \[rsp \+ (0x[0-9a-f]+|\d+)\], (\w+)$")
_ARGUMENT_REGISTERS = ("rax", "rbx")   # Read's c and b.ptr (register ABI, x86-64)
_REGISTER_ALIASES = {"rax": ("rax", "eax", "ax", "al"), "rbx": ("rbx", "ebx", "bx", "bl")}


def arguments_spilled(code: bytes, address: int, machine: int = EM_X86_64) -> bool:
    """Does the function store its first two arguments in their spill slots (above the return address)
    in its straight-line prologue, before any branch, call or RET, i.e. on every path that returns? Then
    they are still there at each RET, for a call whose entry we did not see."""
    if machine == EM_AARCH64:
        return _arm64_arguments_spilled(code, address)
    md = _disassembler(machine)
    frame, framed, stored = 0, False, set()
    for _, _, mnemonic, op_str in md.disasm_lite(code, address):
        if not framed:   # the stack check (cmp, jbe to morestack) comes before the frame is made
            if mnemonic == "push" and op_str == "rbp":
                frame += 8
            elif mnemonic == "sub" and op_str.startswith("rsp, "):
                frame, framed = frame + int(op_str[5:], 0), True
            continue
        if mnemonic.startswith("j") or mnemonic in ("call", "ret"):
            break
        found = _STORE.match(op_str) if mnemonic == "mov" else None
        if found and found.group(2) in _ARGUMENT_REGISTERS:
            if int(found.group(1), 0) == frame + 8 + 8 * _ARGUMENT_REGISTERS.index(found.group(2)):
                stored.add(found.group(2))
            continue
        destination = op_str.split(",", 1)[0].strip()
        for register in _ARGUMENT_REGISTERS:   # overwritten before it was stored: the slot is not the argument
            if register not in stored and destination in _REGISTER_ALIASES[register]:
                return False
    return stored == set(_ARGUMENT_REGISTERS)


# arm64: `str x30, [sp, #-N]!` opens an N-byte frame (saving the return address at its bottom); Read's
# c and b.ptr arrive in x0 and x1, and their spill slots sit above the frame, at N + 8 + 8*i (the
# caller's saved return PC is at N). Larger frames open another way and are not recognised: no.
_ARM64_FRAME = re.compile(r"x30, \[sp, #-(0x[0-9a-f]+|\d+)\]!$")
_ARM64_STORE = re.compile(r"((?:[xw]\w+, )+)\[sp, #(0x[0-9a-f]+|\d+)\]$")
_ARM64_ARGUMENTS = ("x0", "x1")
_ARM64_PAIR_LOADS = ("ldp", "ldnp", "ldpsw", "ldxp", "ldaxp")
_ARM64_BRANCHES = ("b", "bl", "br", "blr", "ret", "cbz", "cbnz", "tbz", "tbnz", "svc", "brk")


def _arm64_branch(mnemonic: str) -> bool:
    return mnemonic in _ARM64_BRANCHES or mnemonic.startswith("b.")   # b.ls, b.ne, ... (not bic, bfi)


def _arm64_arguments_spilled(code: bytes, address: int) -> bool:
    md = _disassembler(EM_AARCH64)
    frame, stored = None, set()
    for _, _, mnemonic, op_str in md.disasm_lite(code, address):
        if frame is None:   # the stack check (ldr, cmp, b.ls to morestack) comes before the frame
            found = _ARM64_FRAME.match(op_str) if mnemonic == "str" else None
            if found:
                frame = int(found.group(1), 0)
            elif _arm64_branch(mnemonic) and mnemonic != "b.ls":
                return False   # no frame of this form before the body
            continue
        if _arm64_branch(mnemonic):
            break
        if mnemonic.startswith("st"):   # stores write memory only (no writeback form on sp here)
            found = _ARM64_STORE.match(op_str) if mnemonic in ("str", "stp") else None
            if found:
                registers = [r.strip() for r in found.group(1).split(",") if r.strip()]
                for i, register in enumerate(registers):
                    slot = int(found.group(2), 0) + 8 * i
                    if register in _ARM64_ARGUMENTS and slot == frame + 8 + 8 * _ARM64_ARGUMENTS.index(register):
                        stored.add(register)
            continue
        operands = [o.strip() for o in op_str.split(",")]
        destinations = operands[:2] if mnemonic in _ARM64_PAIR_LOADS else operands[:1]
        for register in _ARM64_ARGUMENTS:   # overwritten before it was stored: the slot is not the argument
            if register not in stored and {register, "w" + register[1:]} & set(destinations):
                return False
    return stored == set(_ARM64_ARGUMENTS)


def _member_offset(die: Any) -> Optional[int]:
    location = die.attributes.get("DW_AT_data_member_location")
    if location is None:
        return None
    value = location.value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, list) and value and value[0] == 0x23:   # DW_OP_plus_uconst, ULEB128 operand
        result = shift = 0
        for byte in map(int, value[1:]):
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result
    return None


def dwarf_offsets(path: str) -> Optional[Dict[str, int]]:
    """The offsets from the binary's DWARF, or None without DWARF (or without those structs).

    Walking the DIEs with pyelftools takes ~2 s for a 7 MB program (Go puts every type in one unit
    of thousands of entries). Instead each struct's name is searched for in .debug_info, where Go
    writes it inline as the first attribute of the struct's entry, right after a one-byte abbreviation
    code: the entry is parsed at that offset and kept if it is that struct (~0.1 s in all)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    found: Dict[Tuple[str, str], int] = {}
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return None
            dwarf = elf.get_dwarf_info()
            if dwarf.debug_info_sec is None:   # e.g. only the C parts' .debug_frame
                return None
            stream = dwarf.debug_info_sec.stream   # decompressed if need be
            stream.seek(0)
            info = stream.read()
            for type_name, members in _DWARF_MEMBERS.items():
                for die in _struct_dies(dwarf, info, type_name):
                    for child in die.iter_children():
                        member = child.attributes.get("DW_AT_name")
                        if child.tag == "DW_TAG_member" and member and member.value.decode() in members:
                            offset = _member_offset(child)
                            if offset is not None:
                                found[(type_name, member.value.decode())] = offset
                    break
    except (ELFError, OSError, ValueError, KeyError, AttributeError) as exc:
        log.debug("cannot read DWARF", path=path, error=str(exc))
        return None
    try:
        return {
            "conn": found[("crypto/tls.Conn", "conn")],
            "tcpconn_fd": found[("net.TCPConn", "conn")] + found[("net.conn", "fd")],
            "netfd_sysfd": found[("net.netFD", "pfd")] + found[("internal/poll.FD", "Sysfd")],
            "netfd_family": found[("net.netFD", "family")],
            "netfd_sotype": found[("net.netFD", "sotype")],
        }
    except KeyError:
        return None


def _struct_dies(dwarf: Any, info: bytes, name: str) -> Iterator[Any]:
    """Struct entries named `name`, from the places its name occurs in .debug_info."""
    wanted = name.encode() + b"\0"
    at = info.find(wanted)
    while at >= 0:
        try:
            die = dwarf.get_DIE_from_refaddr(at - 1)
            found = die.tag == "DW_TAG_structure_type" and die.attributes["DW_AT_name"].value == wanted[:-1]
        except Exception:   # most hits are inside other entries: parsing there fails in many ways
            found = False
        if found:
            yield die
        at = info.find(wanted, at + 1)


@dataclass
class GoTarget:
    """A Go program planned for probing: file offsets of each function's entry and RETs."""
    version: str
    pie: bool
    probes: Dict[str, Tuple[int, List[int]]]       # function -> (entry offset, RET offsets)
    offsets: Dict[str, int]
    offsets_from: str                              # "DWARF" or "the go1.X table"
    read_args_spilled: bool = False
    skipped: Dict[str, str] = field(default_factory=dict)   # function -> why it is not probed

    def describe(self) -> str:
        parts = [f"{name.rsplit('.', 1)[-1]} ({len(rets)} RETs)" for name, (_, rets) in self.probes.items()]
        parts += [f"not {name.rsplit('.', 1)[-1]}: {why}" for name, why in self.skipped.items()]
        spilled = "; Reads under way at start found" if self.read_args_spilled else ""
        return (f"{self.version}{' PIE' if self.pie else ''}: {', '.join(parts)}; offsets from {self.offsets_from}"
                + spilled)


def plan(path: str) -> GoTarget:
    """What to probe in the Go executable at `path`. Raises NotGo for anything else and Unsupported
    (with the reason) for Go programs that cannot be probed."""
    if os.path.getsize(path) > MAX_BINARY_SIZE:
        raise NotGo("too large to examine")
    with GoBinary(path) as binary:
        version = binary.go_version
        if version is None:
            raise Unsupported(f"unknown Go version {binary.version!r}")
        machine = binary.machine
        if machine not in MACHINES:
            raise Unsupported(f"{binary.version}: ELF machine {machine} (only x86-64 and arm64 are supported)")
        if machine != HOST_MACHINE:
            raise Unsupported(f"{binary.version}: built for {MACHINES[machine]}, not this machine's CPU")
        if version < MIN_VERSIONS[machine]:
            least = ".".join(map(str, MIN_VERSIONS[machine]))
            raise Unsupported(f"{binary.version} passes arguments on the stack on {MACHINES[machine]} "
                              f"(Go < {least}): unsupported")
        try:
            functions = binary.functions([WRITE, READ])
        except NotGo as exc:
            raise Unsupported(f"{binary.version}: {exc}") from None
        if not functions:
            raise Unsupported(f"{binary.version}: no crypto/tls.(*Conn).Write or Read (no TLS in it)")
        probes, skipped, spilled = {}, {}, False
        for name in (WRITE, READ):
            function = functions.get(name)
            if function is None:
                skipped[name] = "function not found"
                continue
            try:
                probes[name], code = _function_probes(binary, function)
            except (DecodeError, NotGo) as exc:
                skipped[name] = f"decode failure: {exc}"
                continue
            if name == READ:
                spilled = arguments_spilled(code, function.start, machine)
        if not probes:
            raise Unsupported(f"{binary.version}: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
        offsets = dwarf_offsets(path)
        source = "DWARF"
        if offsets is None:
            offsets = KNOWN_VERSIONS.get(version[:2])
            source = f"the go{version[0]}.{version[1]} table"
            if offsets is None:
                raise Unsupported(f"{binary.version}: no DWARF and no built-in struct offsets for this version")
        return GoTarget(binary.version, binary.pie, probes, dict(offsets), source, read_args_spilled=spilled,
                        skipped=skipped)


def _function_probes(binary: GoBinary, function: Function) -> Tuple[Tuple[int, List[int]], bytes]:
    size = function.end - function.start
    if not 0 < size < 1 << 20:
        raise DecodeError(f"implausible size {size}")
    code = binary.read(function.start, size)
    # pclntab ranges run to the next function, over the padding (int3; arm64: zero words, `udf #0`):
    # decodable, and never a RET.
    returns = find_returns(code, function.start, binary.machine)
    if not returns:
        raise DecodeError("no RET instruction")
    return (binary.file_offset(function.start), [binary.file_offset(at) for at in returns]), code


@dataclass
class GoProgram:
    """One Go executable seen, for --check and the tracer's report."""
    path: str
    probed: bool
    detail: str


def _offsets_value(offsets: Dict[str, int], read_args_spilled: bool = False) -> bytes:
    value = events.GoOffsets(read_args_spilled=int(read_args_spilled))
    for name, offset in offsets.items():
        setattr(value, name, offset)
    return bytes(value)


class GoTlsProbes:
    """Probes Go programs for one loaded BpfObject. Not thread-safe: tls.TlsProbes serialises calls."""

    def __init__(self, obj: "BpfObject", compat: bool = False):
        """compat: the compat family of programs is loaded (else the fast one)."""
        self._obj = obj
        self._prefix = "compat_" if compat else ""
        self.programs: List[GoProgram] = []
        obj.map("go_offsets").update((0).to_bytes(8, "little"), _offsets_value(DEFAULT_OFFSETS))

    @property
    def probed(self) -> List[str]:
        return [p.path for p in self.programs if p.probed]

    def examine(self, path: str, shown: str) -> bool:
        """Probe `path` if it is a Go program with crypto/tls. False when it is no Go program at all
        (the caller may look at it otherwise); True when it is Go, probed or not (see .programs)."""
        # One open file for everything: the file examined is the file probed, even if the process
        # that showed it to us exits meanwhile (its /proc/PID/exe would be gone).
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            held = f"/proc/self/fd/{fd}"
            try:
                target = plan(held)
            except NotGo:
                return False
            except Unsupported as exc:
                self._report(shown, False, str(exc))
                return True
            except (struct.error, IndexError, ValueError, OverflowError) as exc:   # a malformed Go binary
                self._report(shown, False, f"cannot read it: {exc}")
                return True
            try:
                self._attach(held, os.fstat(fd).st_ino, target)
            except Exception as exc:   # an odd build is skipped, never fatal
                self._report(shown, False, f"{target.version}: attach failed: {exc}")
                return True
            self._report(shown, True, target.describe())
            return True
        finally:
            os.close(fd)

    def _report(self, shown: str, probed: bool, detail: str) -> None:
        self.programs.append(GoProgram(shown, probed, detail))
        if probed:
            log.info("probing Go crypto/tls", path=shown, detail=detail)
        else:
            log.info("not probing Go program", path=shown, reason=detail)

    def _attach(self, path: str, inode: int, target: GoTarget) -> None:
        self._obj.map("go_offsets").update(inode.to_bytes(8, "little"),
                                           _offsets_value(target.offsets, target.read_args_spilled))
        links = []
        try:
            for name, (entry, returns) in target.probes.items():
                entry_program, ret_program = (p.format(self._prefix) for p in PROGRAMS[name])
                for at in returns:   # RETs first: an entry without its RETs would only leave stale calls
                    links.append(self._obj.program(ret_program).attach_uprobe_at(path, at))
                links.append(self._obj.program(entry_program).attach_uprobe_at(path, entry))
        except BaseException:
            for link in links:
                link.destroy()
            raise
        self._obj.links += links
