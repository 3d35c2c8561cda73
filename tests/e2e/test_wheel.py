"""The wheel is self-contained: installed in a fresh venv it loads its own libbpf and eBPF objects, with
no clang, no bpftool and no system libbpf on the PATH or in use. And it is portable: one abi3 wheel per
arch (x86-64, arm64) for CPython >= 3.9 on any glibc >= 2.17 (manylinux2014), with libbpf, libelf and
zlib linked into its module. The arm64 wheel is cross-built: here it is checked as files (its module's
machine, symbols and the kernel arch its eBPF object was compiled for); tests/kernels runs it."""
import glob
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection

from tests.unit.btf_reader import struct_layouts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = "httptrace/_libbpf.abi3.so"
OBJECT = "httptrace/bpf/httptrace.bpf.o"
# wheel CPU -> (ELF e_machine of its module, a member only that arch's struct pt_regs has)
ARCHES = {"x86_64": ("EM_X86_64", "orig_ax"), "aarch64": ("EM_AARCH64", "orig_x0")}


@pytest.fixture(scope="module")
def wheels():
    subprocess.run(["make", "-s", "wheel"], cwd=ROOT, check=True, capture_output=True)
    found = {cpu: glob.glob(os.path.join(ROOT, "wheelhouse", f"httptrace-*_{cpu}.whl")) for cpu in ARCHES}
    assert all(len(paths) == 1 for paths in found.values()), found
    assert len(glob.glob(os.path.join(ROOT, "wheelhouse", "*.whl"))) == len(ARCHES)
    return {cpu: paths[0] for cpu, paths in found.items()}


@pytest.fixture(scope="module")
def wheel_path(wheels):
    """The wheel of this machine, which the tests below install and run."""
    return wheels[platform.machine()]


@pytest.fixture(scope="module", params=sorted(ARCHES))
def any_wheel(request, wheels):
    """Each arch's wheel, for the checks that read files only."""
    return request.param, wheels[request.param]


@pytest.fixture(scope="module")
def wheel_venv(wheel_path, tmp_path_factory):
    venv = tmp_path_factory.mktemp("wheel-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", wheel_path], check=True, capture_output=True)
    return venv


@pytest.fixture(scope="module")
def module_elf(any_wheel):
    with zipfile.ZipFile(any_wheel[1]) as wheel:
        return ELFFile(io.BytesIO(wheel.read(MODULE)))


def test_wheel_is_abi3_manylinux2014(any_wheel):
    cpu, wheel_path = any_wheel
    # name-version-python-abi-platform(s).whl; auditwheel writes both names of the platform
    _, _, python, abi, platforms = os.path.basename(wheel_path)[: -len(".whl")].split("-")
    assert (python, abi) == ("cp39", "abi3"), wheel_path
    assert f"manylinux_2_17_{cpu}" in platforms.split("."), wheel_path
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", wheel_path], capture_output=True,
                          text=True, check=True).stdout
    assert f'consistent with the following platform tag: "manylinux_2_17_{cpu}"' in " ".join(show.split()), show


def test_wheel_carries_its_arch_module_and_object_only(any_wheel):
    cpu, wheel_path = any_wheel
    machine, pt_regs_member = ARCHES[cpu]
    with zipfile.ZipFile(wheel_path) as wheel:
        objects = [n for n in wheel.namelist() if n.endswith(".bpf.o")]
        module = ELFFile(io.BytesIO(wheel.read(MODULE)))
        obj = wheel.read(OBJECT)
    assert objects == [OBJECT]
    assert module["e_machine"] == machine
    # the eBPF object was compiled against that arch's vmlinux.h: struct pt_regs is the arch's
    with tempfile.NamedTemporaryFile(suffix=".o") as f:
        f.write(obj)
        f.flush()
        _, pt_regs = struct_layouts(f.name)["pt_regs"]
    assert pt_regs_member in pt_regs, sorted(pt_regs)
    assert not {m for _, m in ARCHES.values() if m != pt_regs_member} & set(pt_regs), sorted(pt_regs)


def test_wheel_has_one_shared_object_the_abi3_module(any_wheel):
    _, wheel_path = any_wheel
    with zipfile.ZipFile(wheel_path) as wheel:
        shared = [n for n in wheel.namelist() if re.search(r"\.so(\.|$)", n)]
    assert shared == [MODULE]  # nothing grafted into httptrace.libs/


def test_every_shared_object_needs_glibc_2_17_at_most(any_wheel):
    _, wheel_path = any_wheel
    with zipfile.ZipFile(wheel_path) as wheel:
        objects = {n: ELFFile(io.BytesIO(wheel.read(n))) for n in wheel.namelist() if re.search(r"\.so(\.|$)", n)}
    assert MODULE in objects
    for name, elf in objects.items():
        section = elf.get_section_by_name(".gnu.version_r")
        assert isinstance(section, GNUVerNeedSection), name
        needed = {aux.name for _, auxes in section.iter_versions() for aux in auxes}
        glibc = [tuple(int(x) for x in v[len("GLIBC_"):].split(".")) for v in needed if v.startswith("GLIBC_")]
        assert glibc, (name, needed)
        assert max(glibc) <= (2, 17), (name, sorted(needed))


def test_module_links_libbpf_libelf_zlib_statically(module_elf):
    dynamic = next(s for s in module_elf.iter_sections() if isinstance(s, DynamicSection))
    needed = [tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
    assert "libc.so.6" in needed
    assert not [n for n in needed if re.match(r"lib(bpf|elf|z)\.", n)], needed
    # only the module's init is exported: the static libraries' symbols stay inside
    exported = [s.name for s in module_elf.get_section_by_name(".dynsym").iter_symbols()
                if s.entry.st_shndx != "SHN_UNDEF" and s["st_info"]["bind"] == "STB_GLOBAL"]
    assert exported == ["PyInit__libbpf"]


@pytest.mark.skipif(sys.version_info < (3, 10), reason="abi3audit needs Python >= 3.10")
def test_module_uses_only_the_stable_abi_of_3_9(any_wheel):
    _, wheel_path = any_wheel
    result = subprocess.run([sys.executable, "-m", "abi3audit", "--strict", "--report", wheel_path],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (extension,) = json.loads(result.stdout)["specs"][wheel_path]["wheel"]
    assert extension["name"] == os.path.basename(MODULE)
    verdict = extension["result"]
    assert verdict["is_abi3"] and verdict["baseline"] == "3.9", verdict
    assert verdict["non_abi3_symbols"] == [] and verdict["future_abi3_objects"] == {}, verdict


def clean_env(venv, tmp_path):
    """A PATH with the venv and nothing else: no clang, no bpftool, no compiler."""
    assert shutil.which("clang-16"), "the build machine should have clang; this test removes it"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "HTTPTRACE"))}
    env["PATH"] = str(venv / "bin")
    return env


def test_wheel_runs_check_without_clang_or_bpftool(wheel_venv, tmp_path):
    env = clean_env(wheel_venv, tmp_path)
    result = subprocess.run([str(wheel_venv / "bin" / "python"), "-m", "httptrace", "--check"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "programs loaded and attached" in result.stdout


PROBE = """
import httptrace, httptrace._libbpf
from importlib import resources
obj = resources.files("httptrace.bpf") / "httptrace.bpf.o"
print("object", obj.is_file(), obj)
print("package", httptrace.__file__)
print("module", httptrace._libbpf.__file__)
print(open("/proc/self/maps").read())
"""


def test_wheel_uses_its_own_libbpf_and_objects(wheel_venv, tmp_path):
    env = clean_env(wheel_venv, tmp_path)
    out = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", PROBE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert f"object True {wheel_venv}" in out
    assert f"package {wheel_venv}" in out
    assert re.search(rf"^module {re.escape(str(wheel_venv))}/\S+/{re.escape(MODULE)}$", out, re.M), out
    mapped = {f[5] for f in (line.split() for line in out.splitlines()) if len(f) == 6 and f[5].startswith("/")}
    assert any(path.endswith(MODULE) for path in mapped), mapped
    # libbpf and libelf are inside the module: neither the system's nor a grafted copy is mapped
    assert not [p for p in mapped if re.search(r"/lib(bpf|elf)[.-]", p) or "httptrace.libs" in p], mapped


PUBLIC_API = """
import os, httptrace
from httptrace import Tracer, Exchange, Reassembler
assert sorted(httptrace.__all__) == sorted(name for name in httptrace.__all__ if hasattr(httptrace, name))
print("typed", os.path.isfile(os.path.join(os.path.dirname(httptrace.__file__), "py.typed")))
print("version", httptrace.__version__)
"""


def test_wheel_exports_the_public_api_and_is_typed(wheel_venv, tmp_path):
    env = clean_env(wheel_venv, tmp_path)
    out = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", PUBLIC_API], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    typed, version = out.splitlines()
    assert typed == "typed True"
    assert re.fullmatch(r"version \d+\.\d+\.\d+.*", version), version   # from the wheel's metadata


# ---- the arm64 wheel's native code runs: under qemu-user, with Debian's arm64 Python ----------------

ARM64_PYTHON = ("libc6", "zlib1g", "libexpat1", "libffi8", "libpython3.11-minimal", "python3.11-minimal",
                "libpython3.11-stdlib", "python3-cffi-backend")
OPEN_OBJECT = """
import platform, sys
import httptrace._libbpf as m
from httptrace import checks
print("machine", platform.machine(), checks.check_arch().ok)
obj = m.lib.bpf_object__open_file(checks.object_path().encode(), m.ffi.NULL)
assert obj != m.ffi.NULL, "bpf_object__open_file failed"
prog = m.lib.bpf_object__next_program(obj, m.ffi.NULL)
while prog != m.ffi.NULL:
    print("program", m.ffi.string(m.lib.bpf_program__name(prog)).decode())
    prog = m.lib.bpf_object__next_program(obj, prog)
m.lib.bpf_object__close(obj)
"""


def _programs(out: str) -> list[str]:
    return sorted(line.split()[1] for line in out.splitlines() if line.startswith("program "))


@pytest.fixture(scope="module")
def arm64_sysroot():
    """Debian bookworm's arm64 python3.11 and cffi backend, unpacked once into the cache."""
    import build   # the repository's build.py: its apt for foreign architectures

    root = os.path.join(os.path.dirname(build.CACHE), "arm64-python3.11")
    if not os.path.isfile(os.path.join(root, "usr", "bin", "python3.11")):
        with tempfile.TemporaryDirectory(dir=os.path.dirname(build.CACHE)) as tmp:
            os.chmod(tmp, 0o755)   # apt downloads as user _apt where it can
            options = build.foreign_apt("arm64")
            subprocess.run(["apt-get", *options, "update", "-qq"], check=True, capture_output=True)
            subprocess.run(["apt-get", *options, "download", "-qq", *ARM64_PYTHON], cwd=tmp, check=True,
                           capture_output=True)
            tree = os.path.join(tmp, "tree")
            for deb in glob.glob(os.path.join(tmp, "*.deb")):
                subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
            shutil.rmtree(root, ignore_errors=True)
            os.rename(tree, root)
    return root


def test_arm64_wheel_loads_its_libbpf_and_opens_its_object_under_qemu(wheels, arm64_sysroot, tmp_path):
    """The aarch64 module imports in an arm64 CPython 3.11 (qemu-aarch64-static), and its libbpf, libelf
    and zlib parse the arm64 object: the same programs as the x86-64 object has."""
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "qemu-aarch64-static is missing: make test installs qemu-user-static"
    with zipfile.ZipFile(wheels["aarch64"]) as wheel:
        wheel.extractall(tmp_path / "arm64")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'arm64'}:{arm64_sysroot}/usr/lib/python3/dist-packages",
               PYTHONHOME=f"{arm64_sysroot}/usr", PYTHONNOUSERSITE="1")
    env.pop("HTTPTRACE_BPF_OBJECT", None)
    done = subprocess.run([qemu, "-L", arm64_sysroot, f"{arm64_sysroot}/usr/bin/python3.11", "-c", OPEN_OBJECT],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "machine aarch64 True" in done.stdout
    with zipfile.ZipFile(wheels["x86_64"]) as wheel:
        wheel.extractall(tmp_path / "x86")
    native_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HTTPTRACE"))}
    native = subprocess.run([sys.executable, "-c", OPEN_OBJECT], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(native_env, PYTHONPATH=str(tmp_path / "x86")), timeout=300)
    assert native.returncode == 0, native.stdout + native.stderr
    assert _programs(done.stdout) == _programs(native.stdout) and len(_programs(done.stdout)) > 20
