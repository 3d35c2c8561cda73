"""goelf and gotls on real Go programs built here: version, functions with and without symbols, the
text base, file offsets, RETs found by decoding, struct offsets from DWARF."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from httptrace import gotls
from httptrace.goelf import EM_AARCH64, EM_X86_64, GoBinary, NotGo

from ..gobuild import EXTPIE_SYMBOLS, build_all, build_arm64, go_tool, go_version

FUNCTIONS = [gotls.WRITE, gotls.READ, "runtime.main", "net/http.(*conn).serve"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return build_all(str(tmp_path_factory.mktemp("gobuilds")), extra=(EXTPIE_SYMBOLS,), may_skip=True)


def test_version_comes_from_the_build_info(builds):
    for path in builds.values():
        with GoBinary(path) as binary:
            assert binary.version == go_version()
            assert binary.go_version == tuple(int(x) for x in go_version()[2:].split(".")[:2])


def test_pie_is_told_by_the_elf_type(builds):
    for name, path in builds.items():
        with GoBinary(path) as binary:
            assert binary.pie == ("pie" in name), name


@pytest.mark.parametrize("path", [sys.executable, __file__])
def test_other_files_are_not_go(path):
    with pytest.raises(NotGo):
        GoBinary(path)


@pytest.mark.parametrize("name", ["default", "pie", "extpie-symbols"])
def test_pclntab_finds_what_the_symbol_table_says(builds, name):
    with GoBinary(builds[name]) as binary:
        symbols = binary.symtab_functions(FUNCTIONS)
        table = binary.pclntab_functions(FUNCTIONS)
        assert sorted(symbols) == sorted(table) == sorted(FUNCTIONS)
        for fn in FUNCTIONS:
            assert table[fn].start == symbols[fn].start, fn
            # pclntab's range runs to the next function: past st_size there is only int3 padding.
            assert table[fn].end >= symbols[fn].end
            assert set(binary.read(symbols[fn].end, table[fn].end - symbols[fn].end)) <= {0xCC}


@pytest.mark.parametrize("stripped, symbols", [("stripped", "default"), ("extpie", "extpie-symbols")])
def test_stripped_builds_are_read_from_pclntab(builds, stripped, symbols):
    """-s -w drops .symtab but not the layout: the same functions at the same addresses."""
    with GoBinary(builds[stripped]) as bare, GoBinary(builds[symbols]) as full:
        assert bare.symtab_functions(FUNCTIONS) is None
        found = bare.functions(FUNCTIONS)
        assert found == full.pclntab_functions(FUNCTIONS)
        assert {fn: f.start for fn, f in found.items()} == {fn: f.start for fn, f in
                                                          full.symtab_functions(FUNCTIONS).items()}


def test_external_linked_pie_text_base_and_pclntab_by_magic(builds):
    with GoBinary(builds["extpie"]) as binary, GoBinary(builds["extpie-symbols"]) as full:
        assert ".gopclntab" not in binary.sections and ".data.rel.ro.gopclntab" not in binary.sections
        relro = binary.sections[".data.rel.ro"]
        assert relro.addr <= binary.pclntab().vaddr < relro.addr + relro.size
        # The measured trap: .text starts before runtime.text, so .text would shift every function.
        assert binary.text_base() == full.symbol_value("runtime.text") != binary.sections[".text"].addr


@pytest.mark.parametrize("name", ["default", "pie", "extpie"])
def test_file_offsets_address_the_same_bytes(builds, name):
    with GoBinary(builds[name]) as binary:
        fn = binary.functions([gotls.WRITE])[gotls.WRITE]
        at = binary.file_offset(fn.start)
        # Go's own linker puts text at 0x401000 from file offset 0x1000 (PIE too); gcc's maps them 1:1.
        assert (at != fn.start) == (name != "extpie")
        with open(builds[name], "rb") as f:
            f.seek(at)
            assert f.read(64) == binary.read(fn.start, 64)


def objdump_returns(path: str, function: str) -> list[int]:
    """RET addresses by Go's own disassembler (needs the symbol table)."""
    out = subprocess.run([go_tool(), "tool", "objdump", "-s", "^" + re.escape(function) + "$", path],
                         capture_output=True, text=True, check=True).stdout
    return [int(line.split()[1], 16) for line in out.splitlines() if re.search(r"\tRET\s*$", line)]


@pytest.mark.parametrize("function", [gotls.WRITE, gotls.READ])
def test_returns_are_the_ones_go_objdump_sees(builds, function):
    with GoBinary(builds["default"]) as binary:
        fn = binary.functions([function])[function]
        code = binary.read(fn.start, fn.end - fn.start)
        returns = gotls.find_returns(code, fn.start)
    assert returns == objdump_returns(builds["default"], function)
    assert all(code[at - fn.start] == 0xC3 for at in returns)


def test_write_has_c3_bytes_that_are_not_returns(builds):
    """Why a byte scan for 0xC3 is wrong: an int3 there would change another instruction."""
    with GoBinary(builds["default"]) as binary:
        fn = binary.functions([gotls.WRITE])[gotls.WRITE]
        code = binary.read(fn.start, fn.end - fn.start)
    returns = gotls.find_returns(code, fn.start)
    c3 = [fn.start + i for i, byte in enumerate(code) if byte == 0xC3]
    assert set(returns) < set(c3)


def test_find_returns_decodes_every_instruction():
    # inc rbx (48 ff c3), then ret: only the second is a RET.
    assert gotls.find_returns(b"\x48\xff\xc3\xc3", 0x1000) == [0x1003]
    with pytest.raises(gotls.DecodeError):
        gotls.find_returns(b"\xc3\x06", 0x1000)   # 06 (push es) does not exist in 64-bit mode


def test_struct_offsets_from_dwarf_match_the_table(builds):
    assert gotls.dwarf_offsets(builds["default"]) == gotls.DEFAULT_OFFSETS
    assert gotls.dwarf_offsets(builds["pie"]) == gotls.DEFAULT_OFFSETS
    assert gotls.dwarf_offsets(builds["stripped"]) is None
    assert gotls.dwarf_offsets(builds["extpie"]) is None


@pytest.mark.parametrize("name, source", [("default", "DWARF"), ("stripped", "table"), ("pie", "DWARF"),
                                          ("extpie", "table")])
def test_plan_probes_both_functions_at_every_return(builds, name, source):
    target = gotls.plan(builds[name])
    assert sorted(target.probes) == sorted([gotls.WRITE, gotls.READ]) and not target.skipped
    assert source in target.offsets_from
    with GoBinary(builds[name]) as binary:
        for function, (entry, returns) in target.probes.items():
            fn = binary.functions([function])[function]
            assert entry == binary.file_offset(fn.start)
            assert returns == [binary.file_offset(at) for at in
                               gotls.find_returns(binary.read(fn.start, fn.end - fn.start), fn.start)]


def test_go_without_tls_is_reported_not_probed(tmp_path):
    (tmp_path / "main.go").write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }\n')
    (tmp_path / "go.mod").write_text("module notls\n\ngo 1.19\n")
    from ..gobuild import go_env

    out = tmp_path / "notls"
    subprocess.run([go_tool(may_skip=True), "build", "-o", str(out), "."], cwd=tmp_path, env=go_env(str(tmp_path), False),
                   check=True, capture_output=True)
    with pytest.raises(gotls.Unsupported, match="no crypto/tls"):
        gotls.plan(str(out))


def test_old_go_is_unsupported(builds, monkeypatch):
    monkeypatch.setattr(GoBinary, "go_version", property(lambda self: (1, 16)))
    with pytest.raises(gotls.Unsupported, match="stack"):
        gotls.plan(builds["default"])


def test_read_spills_its_arguments_and_write_does_not(builds):
    """Read's spilled c and b let a Read already under way when the probes are attached be reported at
    its RET; Write keeps c in a register only, so the check must say no for it."""
    with GoBinary(builds["default"]) as binary:
        found = binary.functions([gotls.READ, gotls.WRITE])
        code = {fn: binary.read(f.start, f.end - f.start) for fn, f in found.items()}
    assert gotls.arguments_spilled(code[gotls.READ], found[gotls.READ].start)
    assert not gotls.arguments_spilled(code[gotls.WRITE], found[gotls.WRITE].start)


STACK_CHECK = bytes.fromhex("493b6610" "7610")   # cmp rsp, [r14+0x10]; jbe morestack
FRAME = bytes.fromhex("4883ec68")                 # sub rsp, 0x68: spill slots at 0x70, 0x78, ...
SPILL_RAX = bytes.fromhex("4889442470")           # mov [rsp+0x70], rax
SPILL_RBX = bytes.fromhex("48895c2478")           # mov [rsp+0x78], rbx


@pytest.mark.parametrize("code, spilled", [
    (STACK_CHECK + FRAME + SPILL_RAX + SPILL_RBX + b"\xc3", True),
    (STACK_CHECK + FRAME + SPILL_RBX + SPILL_RAX + b"\xc3", True),
    (STACK_CHECK + FRAME + SPILL_RAX + b"\xc3" + SPILL_RBX, False),                  # after a RET: not every path
    (STACK_CHECK + FRAME + bytes.fromhex("4889442478") + SPILL_RBX + b"\xc3", False),  # rax into rbx's slot
    (STACK_CHECK + FRAME + bytes.fromhex("31c0") + SPILL_RAX + SPILL_RBX + b"\xc3", False),  # xor eax first
])
def test_arguments_spilled_only_in_the_straight_line_prologue(code, spilled):
    assert gotls.arguments_spilled(code, 0x1000) is spilled


class _Image:
    """Just enough of a GoBinary for Pclntab: the bytes and a text base."""
    def __init__(self, data: bytes, text_base: int):
        self.image, self._text_base = data, text_base

    def text_base(self) -> int:
        return self._text_base


def _pclntab(magic: int, entries: list, names: list, text_start: int = 0) -> bytes:
    """A hand-made pclntab: Go 1.16-1.17 (pointer-sized functab, absolute entries) or 1.18+ (32-bit
    offsets from textStart)."""
    import struct

    wide = magic == 0xFFFFFFFA
    funcnames = b"\0" + b"".join(n.encode() + b"\0" for n in names)
    name_offsets = [funcnames.index(b"\0" + n.encode() + b"\0") + 1 for n in names]
    header_words = 7 if wide else 8
    names_at = 8 + 8 * header_words
    functab_at = names_at + len(funcnames) + (-len(funcnames)) % 8
    pair = "<QQ" if wide else "<II"
    functab_size = (len(entries) + 1) * struct.calcsize(pair)
    funcs, records = [], b""
    for entry, name_off in zip(entries, name_offsets):
        funcs.append(functab_size + len(records))
        records += struct.pack("<Qi4x" if wide else "<Ii", entry, name_off)
    end = entries[-1] + 0x100
    table = b"".join(struct.pack(pair, e, f) for e, f in zip(entries + [end], funcs + [0]))
    if wide:   # nfunc, nfiles, funcnametab, cutab, filetab, pctab, pclntab
        words = [len(entries), 0, names_at, functab_at, functab_at, functab_at, functab_at]
    else:      # nfunc, nfiles, textStart, funcnametab, cutab, filetab, pctab, pclntab
        words = [len(entries), 0, text_start, names_at, functab_at, functab_at, functab_at, functab_at]
    header = struct.pack("<IBBBB", magic, 0, 0, 1, 8) + struct.pack(f"<{header_words}Q", *words)
    return header + funcnames + b"\0" * ((-len(funcnames)) % 8) + table + records


@pytest.mark.parametrize("magic, entries, base", [
    (0xFFFFFFFA, [0x401000, 0x401080, 0x401200], 0),          # Go 1.16-1.17: absolute PCs
    (0xFFFFFFF0, [0x0, 0x80, 0x200], 0x401000),               # Go 1.18-1.19: offsets from textStart
    (0xFFFFFFF1, [0x0, 0x80, 0x200], 0x401000),               # Go 1.20+
])
def test_pclntab_layouts(magic, entries, base):
    from httptrace.goelf import Function, Pclntab

    names = ["main.main", "crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read"]
    table = Pclntab(_Image(_pclntab(magic, entries, names, text_start=base), base), 0, 0)
    found = table.functions([gotls.WRITE, gotls.READ, "missing.function"])
    assert found == {gotls.WRITE: Function(gotls.WRITE, base + entries[1], base + entries[2]),
                     gotls.READ: Function(gotls.READ, base + entries[2], base + entries[2] + 0x100)}


# ---- arm64: the same discovery on Go programs cross-built with GOARCH=arm64 --------------------------

@pytest.fixture(scope="module")
def arm64_builds(tmp_path_factory):
    return build_arm64(str(tmp_path_factory.mktemp("gobuilds-arm64")), may_skip=True)


@pytest.fixture
def on_arm64(monkeypatch):
    """plan() probes only programs of this machine's CPU: pretend it is arm64."""
    monkeypatch.setattr(gotls, "HOST_MACHINE", EM_AARCH64)


RET_ARM64 = bytes.fromhex("c0035fd6")   # ret (x30), little-endian


@pytest.mark.parametrize("function", [gotls.WRITE, gotls.READ])
def test_arm64_returns_are_the_ones_go_objdump_sees(arm64_builds, function):
    with GoBinary(arm64_builds["default"]) as binary:
        assert binary.machine == EM_AARCH64
        fn = binary.functions([function])[function]
        code = binary.read(fn.start, fn.end - fn.start)
        returns = gotls.find_returns(code, fn.start, EM_AARCH64)
    assert returns and returns == objdump_returns(arm64_builds["default"], function)
    assert all(code[at - fn.start:at - fn.start + 4] == RET_ARM64 for at in returns)
    # every RET word is found, and nothing else: arm64 instructions do not overlap
    assert returns == [fn.start + i for i in range(0, len(code), 4) if code[i:i + 4] == RET_ARM64]


def test_arm64_code_is_not_decoded_as_x86(arm64_builds):
    with GoBinary(arm64_builds["default"]) as binary:
        fn = binary.functions([gotls.READ])[gotls.READ]
        code = binary.read(fn.start, fn.end - fn.start)
    with pytest.raises(gotls.DecodeError):   # decoded as x86-64 it falls apart: the machine must be passed
        gotls.find_returns(code, fn.start, EM_X86_64)


def test_arm64_find_returns_needs_whole_instructions():
    assert gotls.find_returns(bytes.fromhex("1f2003d5") + RET_ARM64, 0x1000, EM_AARCH64) == [0x1004]  # nop; ret
    with pytest.raises(gotls.DecodeError):
        gotls.find_returns(RET_ARM64 + b"\xc0\x03", 0x1000, EM_AARCH64)   # half an instruction


def test_arm64_read_spills_its_arguments_and_write_does_not(arm64_builds):
    with GoBinary(arm64_builds["default"]) as binary:
        found = binary.functions([gotls.READ, gotls.WRITE])
        code = {fn: binary.read(f.start, f.end - f.start) for fn, f in found.items()}
    assert gotls.arguments_spilled(code[gotls.READ], found[gotls.READ].start, EM_AARCH64)
    assert not gotls.arguments_spilled(code[gotls.WRITE], found[gotls.WRITE].start, EM_AARCH64)


# Go 1.19's Read prologue: ldr x16, [x28, #0x10]; cmp sp, x16; b.ls morestack; then the frame
ARM64_CHECK = bytes.fromhex("900b40f9" "ff6330eb" "891b0054")
ARM64_FRAME = bytes.fromhex("fe0f19f8" "fd831ff8" "fd2300d1")  # str x30, [sp, #-0x70]!; stur x29; sub x29
ARM64_SPILL_X0 = bytes.fromhex("e03f00f9")                     # str x0, [sp, #0x78]
ARM64_SPILL_X1 = bytes.fromhex("e14300f9")                     # str x1, [sp, #0x80]


@pytest.mark.parametrize("code, spilled", [
    (ARM64_CHECK + ARM64_FRAME + ARM64_SPILL_X0 + ARM64_SPILL_X1 + RET_ARM64, True),
    (ARM64_CHECK + ARM64_FRAME + ARM64_SPILL_X1 + ARM64_SPILL_X0 + RET_ARM64, True),
    (ARM64_CHECK + ARM64_FRAME + bytes.fromhex("e1030faa") + ARM64_SPILL_X0 + ARM64_SPILL_X1 + RET_ARM64,
     False),                                                                              # mov x1, x15 first
    (ARM64_CHECK + ARM64_FRAME + ARM64_SPILL_X0 + RET_ARM64 + ARM64_SPILL_X1, False),   # after a RET
    (ARM64_CHECK + ARM64_FRAME + bytes.fromhex("e04300f9") + ARM64_SPILL_X1 + RET_ARM64, False),  # x0 in x1's slot
    (ARM64_CHECK + ARM64_SPILL_X0 + ARM64_SPILL_X1 + RET_ARM64, False),                  # no frame opened
])
def test_arm64_arguments_spilled_only_in_the_straight_line_prologue(code, spilled):
    assert gotls.arguments_spilled(code, 0x1000, EM_AARCH64) is spilled


@pytest.mark.parametrize("name", ["default", "stripped", "pie"])
def test_arm64_plan_probes_both_functions_at_every_return(arm64_builds, name, on_arm64):
    target = gotls.plan(arm64_builds[name])
    assert sorted(target.probes) == sorted([gotls.WRITE, gotls.READ]) and not target.skipped
    assert target.offsets == gotls.DEFAULT_OFFSETS   # DWARF or the table: the same on both CPUs
    assert target.read_args_spilled
    with GoBinary(arm64_builds[name]) as binary:
        for function, (entry, returns) in target.probes.items():
            fn = binary.functions([function])[function]
            assert entry == binary.file_offset(fn.start)
            assert returns == [binary.file_offset(at) for at in
                               gotls.find_returns(binary.read(fn.start, fn.end - fn.start), fn.start, EM_AARCH64)]


def test_programs_of_another_cpu_are_not_probed(builds, arm64_builds, on_arm64, monkeypatch):
    with pytest.raises(gotls.Unsupported, match="built for x86-64"):
        gotls.plan(builds["default"])
    monkeypatch.setattr(gotls, "HOST_MACHINE", EM_X86_64)
    with pytest.raises(gotls.Unsupported, match="built for arm64"):
        gotls.plan(arm64_builds["default"])


def test_arm64_go_1_17_is_unsupported(arm64_builds, on_arm64, monkeypatch):
    monkeypatch.setattr(GoBinary, "go_version", property(lambda self: (1, 17)))   # arm64's register ABI: 1.18
    with pytest.raises(gotls.Unsupported, match="stack on arm64"):
        gotls.plan(arm64_builds["default"])
