#!/usr/bin/env python3
"""Boot each guest of kernels.txt under QEMU and run guest_check.py in it with the built wheel.

    python tests/kernels/run_kernels.py [--wheel WHEEL ...] [--kernels FILE | --guest LINE ...]
                                        [--timeout S] [--quiet] [--guest-command SHELL]

A guest is a Debian kernel, a Debian userland and the program family httptrace must pick on that
kernel, of one arch (amd64, or arm64 emulated on this x86-64 host): one line of kernels.txt. It gets
the wheel whose platform tag is its arch's. For each guest:
  * apt lists of the userland's suite, private to the cache (the host's apt configuration is left
    alone), resolve the kernel package; `apt-get download` fetches it and vmlinuz plus the modules
    init.sh needs are cached;
  * the userland is built once with debootstrap (minbase + python3, curl, openssl, nginx) and cached;
    another arch's runs its programs on the host through qemu-user-static (binfmt_misc);
  * the scratch directory artifacts/<suite>-<package>/ gets a venv made by the userland's own python3
    (on the host, chrooted into the userland; with the dependencies made once and cached) with the
    wheel and its dependencies installed from a local wheelhouse (`pip download` for that Python and
    arch, on the host), guest_check.py, guest.sh and the seed server (Go, static, of the arch);
  * QEMU (software emulation: nested KVM does not boot here) boots the kernel with an initramfs of
    busybox-static, the kernel's own virtio + 9p modules and init.sh; the guest mounts the userland
    read-only and the scratch directory read-write at /httptrace over virtio-9p, chroots into the
    userland and runs guest.sh;
  * the serial console is kept as console.log; the guest leaves result.json (and verifier.log when a
    load failed) beside it.
Everything downloaded or built is cached in $HTTPTRACE_CACHE (default /var/cache/httptrace), so a second
run downloads nothing. Exit status 0 when every guest booted and passed every check. Runs as root
(debootstrap, chroot, mount); needs qemu-system-x86, busybox-static, debootstrap and go, and for the
arm64 guests qemu-system-arm and qemu-user-static (`make test-kernels` installs them).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import email.parser
import fcntl
import glob
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNELS_FILE = os.path.join(HERE, "kernels.txt")
ARTIFACTS = os.path.join(HERE, "artifacts")
CACHE = os.environ.get("HTTPTRACE_CACHE") or "/var/cache/httptrace"
MIRROR = os.environ.get("HTTPTRACE_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
SECURITY_MIRROR = os.environ.get("HTTPTRACE_DEBIAN_SECURITY_MIRROR") or "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"  # debian-archive-keyring: every release's keys
BUSYBOX = "/bin/busybox"  # the host's (busybox-static), for guests of the host's arch
SEED_SOURCE = os.path.join(ROOT, "tests", "e2e", "servers", "seed")
# The userland's packages the checks use: python3 (+ venv, whose pip is the distribution's), curl and
# openssl (the distribution's libssl), nginx. debootstrap adds their dependencies, not their Recommends.
USERLAND_PACKAGES = ("python3", "python3-venv", "curl", "openssl", "nginx-light")
GUEST_DIR = "/httptrace"  # the scratch directory inside the userland: on the host (chroot) and in the guest
# The userland is read-only in the guest; these of its directories get a tmpfs each (nginx writes two).
GUEST_TMPFS = ("/tmp", "/run", "/var/tmp", "/var/lib/nginx", "/var/log/nginx")
FAMILIES = ("fast", "compat")
# What init.sh needs from the kernel's modules; their dependencies are added from each module's modinfo.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
DEFAULT_TIMEOUT = 540  # seconds for one guest, boot to power-off


class KernelTestError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Arch:
    """What differs between the guests' architectures. `name` is Debian's (and Go's) name of the arch."""
    name: str
    uname: str                 # uname -m, and the end of the wheel's platform tag
    qemu: str                  # the system emulator
    qemu_package: str          # the Debian package that has it
    qemu_machine: tuple[str, ...]
    console: str               # the serial console's device in the guest

    @property
    def pip_platform(self) -> str:
        return f"manylinux2014_{self.uname}"  # pip accepts manylinux_2_17 and older wheels for it


ARCHES = {
    "amd64": Arch("amd64", "x86_64", "qemu-system-x86_64", "qemu-system-x86", ("-cpu", "max"), "ttyS0"),
    # -cpu max emulates pointer authentication with QARMA, which makes everything ~6x slower (boot to
    # init 19.7 s instead of 3.3 s); pauth-impdef=on keeps the feature with QEMU's cheap hash.
    "arm64": Arch("arm64", "aarch64", "qemu-system-aarch64", "qemu-system-arm",
                  ("-machine", "virt", "-cpu", "max,pauth-impdef=on"), "ttyAMA0"),
}
HOST_ARCH = next((a for a in ARCHES.values() if a.uname == os.uname().machine), ARCHES["amd64"])


def log(msg: str) -> None:
    print(f"[kernels] {msg}", flush=True)


# ---- kernels.txt ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Guest:
    kernel: str  # a Debian image package; `*` stands for a number (the ABI)
    suite: str   # the Debian userland, whose archive also provides the kernel package
    family: str  # the program family httptrace must pick on this kernel: fast or compat
    arch: str = "amd64"  # a key of ARCHES: the kernel's, the userland's and the wheel's

    def __str__(self) -> str:
        return f"{self.kernel} {self.suite} {self.family} {self.arch}"

    @property
    def spec(self) -> Arch:
        return ARCHES[self.arch]


def parse_guest(line: str, where: str = "") -> Guest:
    fields = line.split()
    if (len(fields) not in (3, 4) or not re.fullmatch(r"[a-z]+", fields[1]) or fields[2] not in FAMILIES
            or fields[3:] and fields[3] not in ARCHES):
        raise ValueError(f"{where}{line.strip()!r}: want 'KERNEL-PACKAGE SUITE FAMILY [ARCH]' (family: "
                         f"{' or '.join(FAMILIES)}; arch: {' or '.join(ARCHES)}, amd64 if left out)")
    return Guest(*fields)


def read_guest_list(path: str = KERNELS_FILE) -> list[Guest]:
    guests = []
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].strip()
            if line:
                guests.append(parse_guest(line, f"{os.path.basename(path)}:{number}: "))
    return guests


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# ---- apt of one suite, and the kernels -----------------------------------------------------------

def cache_name(name: str, arch: str) -> str:
    """A per-arch name in the cache; amd64's are the names from before other arches (caches stay valid)."""
    return name if arch == "amd64" else f"{name}-{arch}"


class SuiteApt:
    """apt for one Debian suite (and its -security suite) and one arch, with sources, lists and package
    cache of its own under the cache: the host's apt need not know the suite or the arch (no dpkg
    --add-architecture), and its configuration is not changed."""

    def __init__(self, suite: str, arch: str = "amd64"):
        self.suite = suite
        self.arch = arch
        self.dir = os.path.join(CACHE, "apt", cache_name(suite, arch))
        self.updated = False  # in this run
        d = self.dir
        self.options = [arg for key, value in (("Dir::Etc::SourceList", f"{d}/sources.list"),
                                               ("Dir::Etc::SourceParts", f"{d}/sources.list.d"),
                                               ("Dir::Etc::Preferences", f"{d}/preferences"),
                                               ("Dir::Etc::PreferencesParts", f"{d}/preferences.d"),
                                               ("Dir::State::Lists", f"{d}/lists"), ("Dir::Cache", f"{d}/cache"),
                                               ("APT::Architecture", arch), ("APT::Architectures", arch))
                        for arg in ("-o", f"{key}={value}")]
        suites = [(MIRROR, suite)] + ([] if suite in ("sid", "unstable") else [(SECURITY_MIRROR, f"{suite}-security")])
        sources = "".join(f"deb [signed-by={KEYRING}] {url} {name} main\n" for url, name in suites)
        for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        path = os.path.join(d, "sources.list")
        if _read(path) != sources:  # a new mirror: the old lists are stale
            with open(path, "w") as f:
                f.write(sources)
            for old in glob.glob(os.path.join(d, "lists", "*_Packages*")):
                os.unlink(old)

    def has_lists(self) -> bool:
        return bool(glob.glob(os.path.join(self.dir, "lists", "*_Packages*")))

    def update(self) -> None:
        if self.updated:
            return
        log(f"apt-get update for {self.suite} {self.arch} (lists in {self.dir})")
        done = subprocess.run(["apt-get", *self.options, "update", "-qq"], capture_output=True, text=True)
        if done.returncode != 0 or not self.has_lists():
            raise KernelTestError(f"apt-get update for {self.suite} failed:\n{done.stdout}{done.stderr}")
        self.updated = True

    def resolve(self, entry: str) -> str:
        """An exact package name as it is; with `*`, the newest package the suite has where `*` is a
        number (`linux-image-6.1.0-*-amd64-unsigned` matches -56-amd64 but not -56-rt-amd64 or -cloud-)."""
        if "*" not in entry:
            return entry
        pattern = re.compile("[0-9]+".join(re.escape(part) for part in entry.split("*")) + "$")
        prefix = entry.split("*", 1)[0]
        if not self.has_lists():
            self.update()
        while True:
            out = subprocess.run(["apt-cache", *self.options, "pkgnames", prefix], capture_output=True,
                                 text=True).stdout
            names = sorted((n for n in out.split() if pattern.match(n)), key=_natural)
            if names:
                return names[-1]
            if self.updated:
                raise KernelTestError(f"no package of {self.suite} (and {self.suite}-security) matches {entry!r}")
            self.update()

    def download(self, package: str, directory: str) -> list[str]:
        """The .deb of `package` in `directory`; the lists are refreshed once if the archive dropped it.
        Where the -security build is listed but cannot be fetched (bullseye-security's arm64 pool answers
        404 here), the suite's own build (`package/suite`) is taken."""
        for attempt, name in enumerate((package, package, f"{package}/{self.suite}")):
            if attempt == 1:  # fresh lists (once per run), in case the archive dropped that version
                self.update()
            got = subprocess.run(["apt-get", *self.options, "download", "-q", name], cwd=directory,
                                 capture_output=True, text=True)
            if got.returncode == 0:
                if name != package:
                    log(f"{package}: {self.suite}-security's build failed to download; took {self.suite}'s")
                return glob.glob(os.path.join(directory, "*.deb"))
        raise KernelTestError(f"apt-get download {package} ({self.suite} {self.arch}) failed:\n"
                              f"{got.stdout}{got.stderr}")


_APTS: dict[tuple[str, str], SuiteApt] = {}


def suite_apt(suite: str, arch: str = "amd64") -> SuiteApt:
    if (suite, arch) not in _APTS:
        _APTS[suite, arch] = SuiteApt(suite, arch)
    return _APTS[suite, arch]


def resolve_package(guest: Guest) -> str:
    if "*" not in guest.kernel:
        return guest.kernel
    return suite_apt(guest.suite, guest.arch).resolve(guest.kernel)


@dataclasses.dataclass
class Kernel:
    package: str
    release: str
    vmlinuz: str
    modules: list[str]  # paths of uncompressed .ko files, dependencies first

    @property
    def version(self) -> tuple[int, int]:
        major, minor = self.release.split(".")[:2]
        return int(major), int(minor)


def _module_depends(path: str) -> list[str]:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(".modinfo")
        data = section.data() if section is not None else b""
    for item in data.split(b"\0"):
        if item.startswith(b"depends="):
            return [d for d in item[len(b"depends="):].decode().split(",") if d]
    return []


def _decompressed(src: str, dst: str) -> None:
    if src.endswith(".ko"):
        shutil.copyfile(src, dst)
    elif src.endswith(".ko.xz"):
        with lzma.open(src) as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    elif src.endswith(".ko.gz"):
        with gzip.open(src) as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    elif src.endswith(".ko.zst"):
        subprocess.run(["zstd", "-q", "-d", "-o", dst, src], check=True)
    else:
        raise KernelTestError(f"unknown module compression: {src}")


def _module_name(path: str) -> str:
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def fetch_kernel(package: str, apt: "SuiteApt") -> Kernel:
    """The kernel image and the modules init.sh loads, from the cache or freshly from the suite's apt."""
    cache = os.path.join(CACHE, "kernels", package)
    manifest = os.path.join(cache, "kernel.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            info = json.load(f)
        return Kernel(package, info["release"], os.path.join(cache, "vmlinuz"),
                      [os.path.join(cache, "modules", f"{m}.ko") for m in info["modules"]])
    log(f"fetching {package} from {apt.suite} with apt-get download")
    with tempfile.TemporaryDirectory(prefix="httptrace-kernel-") as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user writes the download here
        (deb,) = apt.download(package, tmp)
        tree = os.path.join(tmp, "tree")
        subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
        images = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))
        if len(images) != 1:
            raise KernelTestError(f"{package}: expected one /boot/vmlinuz-*, found {images}")
        release = os.path.basename(images[0])[len("vmlinuz-"):]
        # /lib/modules up to Debian 12, /usr/lib/modules from 13 (merged /usr)
        (modules,) = [d for d in (os.path.join(tree, "lib", "modules", release),
                                  os.path.join(tree, "usr", "lib", "modules", release)) if os.path.isdir(d)]
        available = {_module_name(p): p for p in glob.glob(os.path.join(modules, "**", "*.ko*"), recursive=True)}
        builtin_path = os.path.join(modules, "modules.builtin")
        builtin = set()
        if os.path.exists(builtin_path):
            with open(builtin_path) as f:
                builtin = {_module_name(line.strip()) for line in f if line.strip()}
        staging = os.path.join(tmp, "cache")
        os.makedirs(os.path.join(staging, "modules"))
        order: list[str] = []

        def add(name: str, chain: tuple[str, ...] = ()) -> None:
            name = name.replace("-", "_")
            if name in order or name in builtin:
                return
            if name not in available:
                raise KernelTestError(f"{package} has no module {name} (needed by {' <- '.join(chain) or 'init'}); "
                                      "the guest needs virtio-pci and 9p (the cloud flavour has no 9p)")
            dst = os.path.join(staging, "modules", f"{name}.ko")
            _decompressed(available[name], dst)
            for dep in _module_depends(dst):
                add(dep, (name, *chain))
            order.append(name)

        for wanted in WANTED_MODULES:
            add(wanted)
        shutil.copyfile(images[0], os.path.join(staging, "vmlinuz"))
        config = os.path.join(tree, "boot", f"config-{release}")
        if os.path.exists(config):
            shutil.copyfile(config, os.path.join(staging, "config"))
        with open(os.path.join(staging, "kernel.json"), "w") as f:
            json.dump({"package": package, "release": release, "modules": order}, f, indent=1)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(staging, cache)
    log(f"cached {package} ({release}) in {cache}")
    return fetch_kernel(package, apt)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _read_json(path: str):
    text = _read(path)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _write_json(path: str, data) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def is_static(path: str) -> bool:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return not any(seg["p_type"] == "PT_INTERP" for seg in ELFFile(f).iter_segments())


def elf_machine(path: str) -> str:
    """The ELF file's arch as uname -m names it (x86_64, aarch64)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        return {"EM_X86_64": "x86_64", "EM_AARCH64": "aarch64"}.get(ELFFile(f)["e_machine"], "?")


@contextlib.contextmanager
def _locked(directory: str):
    """One run at a time builds or chroots into a cached userland (two `make test` in parallel)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _mounts_under(path: str) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p == real or p.startswith(real + os.sep)]


def _remove_tree(path: str) -> None:
    """rmtree, but never through a mount (a bind mount left by a killed run would lose its contents)."""
    for point in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(path):
        raise KernelTestError(f"{path} still has mounts under it: {_mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=True)


def chroot_run(root: str, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a program of the userland in it, with a clean environment (none of the host's PIP_* etc.)."""
    return subprocess.run(["chroot", root, "/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
                           f"HOME={GUEST_DIR}", "LANG=C.UTF-8", *argv], capture_output=True, text=True,
                          timeout=timeout)


# ---- the userland --------------------------------------------------------------------------------

BINFMT = "/proc/sys/fs/binfmt_misc"


def run_foreign_binaries(arch: Arch) -> None:
    """Let the host run the arch's programs (debootstrap's second stage, the userland's python3 and pip in
    a chroot): binfmt_misc hands them to qemu-user-static. Mounts binfmt_misc where nobody has and
    registers qemu-<machine> from qemu-user-static's own binfmt.d entry, whose flag F makes the kernel
    open the interpreter now, so that it is found inside a chroot too."""
    if arch == HOST_ARCH:
        return
    if not os.path.ismount(BINFMT):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", BINFMT], check=True)
    entry = os.path.join(BINFMT, f"qemu-{arch.uname}")
    if not os.path.exists(entry):
        conf = f"/usr/lib/binfmt.d/qemu-{arch.uname}.conf"
        if not os.path.exists(conf):
            raise KernelTestError(f"{conf} is missing: apt-get install qemu-user-static (make test-kernels does)")
        with open(conf) as f:
            line = f.read().strip()
        with open(os.path.join(BINFMT, "register"), "w") as f:
            f.write(line)
        log(f"registered qemu-{arch.uname} in binfmt_misc ({conf})")
    with open(entry) as f:
        status = f.read()
    flags = re.search(r"^flags: *(\S*)", status, re.M)
    if not status.startswith("enabled") or not flags or "F" not in flags.group(1):
        raise KernelTestError(f"{entry} is not enabled with flag F (needed in a chroot):\n{status}")


@dataclasses.dataclass
class Userland:
    suite: str
    arch: str
    root: str
    python: str   # "3.9.2"
    glibc: str    # "2.31"
    openssl: str  # "OpenSSL 1.1.1w  11 Sep 2023"

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


USERLAND_FACTS = ("import json, os, platform, ssl; print(json.dumps({'python': platform.python_version(), "
                  "'glibc': os.confstr('CS_GNU_LIBC_VERSION').split()[-1], 'openssl': ssl.OPENSSL_VERSION}))")


def userland(suite: str, arch: str = "amd64") -> Userland:
    """The suite's userland of that arch, from the cache, or built with debootstrap when the package list
    changed (another arch than the host's: debootstrap's second stage runs under qemu-user-static)."""
    base = os.path.join(CACHE, "guests", cache_name(suite, arch))
    root, stamp_path = os.path.join(base, "root"), os.path.join(base, "stamp.json")
    wanted = {"suite": suite, "arch": arch, "mirror": MIRROR, "variant": "minbase",
              "packages": sorted(USERLAND_PACKAGES)}
    run_foreign_binaries(ARCHES[arch])
    with _locked(base):
        stamp = _read_json(stamp_path) or {}
        built = dict(stamp.get("built") or {})
        built.setdefault("arch", "amd64")  # a stamp from before other arches
        if built == wanted and os.path.isfile(os.path.join(root, "usr/bin/python3")):
            return Userland(suite, arch, root, **stamp["facts"])
        if not shutil.which("debootstrap"):
            raise KernelTestError("debootstrap is missing: apt-get install debootstrap (make test-kernels does)")
        new = root + ".new"
        _remove_tree(new)
        debootstrap_log = os.path.join(base, "debootstrap.log")
        log(f"debootstrap {suite} {arch} (minbase + {' '.join(USERLAND_PACKAGES)}) into {root}; "
            f"log: {debootstrap_log}")
        started = time.monotonic()
        with open(debootstrap_log, "w") as out:
            done = subprocess.run(["debootstrap", f"--arch={arch}", "--variant=minbase",
                                   f"--include={','.join(USERLAND_PACKAGES)}", f"--keyring={KEYRING}", suite, new,
                                   MIRROR], stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise KernelTestError(f"debootstrap {suite} {arch} failed (exit {done.returncode}); the end of "
                                  f"{debootstrap_log}:\n{_tail(debootstrap_log, 15)}")
        for deb in glob.glob(os.path.join(new, "var", "cache", "apt", "archives", "*.deb")):
            os.unlink(deb)
        os.makedirs(new + GUEST_DIR, exist_ok=True)
        facts = chroot_run(new, ["/usr/bin/python3", "-c", USERLAND_FACTS])
        if facts.returncode != 0:
            raise KernelTestError(f"the {suite} {arch} userland's python3 does not run:\n{facts.stderr}")
        _remove_tree(root)
        _remove_tree(os.path.join(base, "venv"))  # dependency_venv()'s, made by the old userland's python3
        os.rename(new, root)
        _write_json(stamp_path, {"built": wanted, "facts": json.loads(facts.stdout),
                                 "seconds": round(time.monotonic() - started)})
        log(f"built the {suite} {arch} userland in {time.monotonic() - started:.0f}s")
    return userland(suite, arch)


# ---- what goes into the venv: the wheel's dependencies, the seed server --------------------------

def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_requirements(wheel: str, python: str) -> list[str]:
    """A wheel's run-time Requires-Dist (no extras), markers evaluated for that Python version."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's own copy, always there where pip is
        from pip._vendor.packaging.requirements import Requirement
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        metadata = email.parser.Parser().parsestr(z.read(name).decode())
    environment = {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python, "extra": ""}
    requirements = []
    for spec in metadata.get_all("Requires-Dist") or []:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate(environment):
            req.marker = None
            requirements.append(str(req))
    return sorted(requirements)


def dependency_wheels(wheel: str, land: Userland) -> str:
    """A directory of binary wheels of the wheel's dependencies for the userland's Python, fetched once."""
    return wheels_for(wheel_requirements(wheel, land.python), land, "")


def wheels_for(requirements: list[str], land: Userland, purpose: str) -> str:
    """A directory of binary wheels of `requirements` (and what they need) for the userland's Python,
    fetched once per purpose ('' for the wheel's own dependencies)."""
    name = f"cp{land.python_minor.replace('.', '')}" + (f"-{purpose}" if purpose else "")
    directory = os.path.join(CACHE, "pypi", cache_name(name, land.arch))
    platform = ARCHES[land.arch].pip_platform
    wanted = {"python": land.python_minor, "platform": platform, "requirements": requirements,
              "closure": "markers for the target"}  # the stamps of runs that missed typing-extensions differ
    if (_read_json(os.path.join(directory, "stamp.json")) or {}).get("fetched") == wanted:
        return directory
    new = directory + ".new"
    _remove_tree(new)
    os.makedirs(new)
    # pip download evaluates the dependencies' markers for the host's Python, not --python-version's
    # (structlog needs typing-extensions below 3.11): add what the target needs until nothing is missing.
    asked = list(requirements)
    for _ in range(5):
        if not asked:
            break
        log(f"pip download for Python {land.python_minor} ({platform}): {' '.join(asked)}")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                               "--dest", new, "--only-binary=:all:", "--implementation", "cp",
                               "--python-version", land.python_minor, "--platform", platform, *asked],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelTestError(f"pip download of {' '.join(asked)} for Python {land.python_minor} "
                                  f"failed:\n{done.stdout}{done.stderr}")
        fetched = glob.glob(os.path.join(new, "*.whl"))
        have = {_canonical(os.path.basename(path).split("-")[0]) for path in fetched}
        missing = sorted({req for path in fetched for req in wheel_requirements(path, land.python)
                          if _canonical(re.split(r"[\s\[<>=!~;]", req, 1)[0]) not in have} - set(asked))
        if not missing:
            break
        asked += missing
    _write_json(os.path.join(new, "stamp.json"), {"fetched": wanted, "asked": asked})
    _remove_tree(directory)
    os.rename(new, directory)
    return directory


def test_requirements(python: str) -> list[str]:
    """The project's run-time dependencies and its test extra, markers evaluated for that Python."""
    import tomllib

    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    environment = {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python, "extra": ""}
    chosen = []
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate(environment):
            req.marker = None
            chosen.append(str(req))
    return sorted(chosen)


def run_unit_tests(suite: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """tests/unit with the suite's own python3 (Debian 11: 3.9, the oldest httptrace supports), on the host
    in a chroot: the source tree (with its built object and abi3 module) is copied into a scratch directory
    bind-mounted into the userland, next to a venv made there from wheels fetched for that Python."""
    land = userland(suite)
    wheels = wheels_for(test_requirements(land.python), land, "test")
    scratch = os.path.join(ARTIFACTS, f"unit-{suite}")
    _remove_tree(scratch)
    os.makedirs(scratch)
    shutil.copytree(ROOT, os.path.join(scratch, "src"), symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "wheelhouse", "*.egg-info", "__pycache__", "artifacts", "cache"))
    shutil.copytree(wheels, os.path.join(scratch, "wheels"))
    venv = f"{GUEST_DIR}/venv"
    steps = (["/usr/bin/python3", "-m", "venv", venv],
             [f"{venv}/bin/python", "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir",
              "--disable-pip-version-check", "--find-links", f"{GUEST_DIR}/wheels",
              *test_requirements(land.python)],
             ["/usr/bin/env", f"PYTHONPATH={GUEST_DIR}/src", f"{venv}/bin/python", "-m", "pytest", "-q",
              "-p", "no:cacheprovider", f"{GUEST_DIR}/src/tests/unit"])
    # The tests read /proc (Prometheus' process collector) and open pseudo-terminals.
    mounts = ((["--bind", scratch], GUEST_DIR), (["-t", "proc", "proc"], "/proc"), (["--rbind", "/dev"], "/dev"))
    with _locked(os.path.dirname(land.root)):
        mounted = []
        try:
            for how, where in mounts:
                subprocess.run(["mount", *how, land.root + where], check=True)
                mounted.append(land.root + where)
            for argv in steps:
                done = chroot_run(land.root, argv, timeout=timeout)
                if done.returncode != 0:
                    return done
            return done
        finally:
            for point in reversed(mounted):
                subprocess.run(["umount", "-R", point], check=False)


def seed_server(arch: str = "amd64") -> str:
    """tests/e2e's Go seed server for the arch, built static (CGO_ENABLED=0: it runs in any userland; Go
    cross-compiles without a C toolchain), once per source."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(SEED_SOURCE)):
        with open(os.path.join(SEED_SOURCE, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    out = os.path.join(CACHE, "seed-server", cache_name(digest.hexdigest()[:16], arch), "seed-server")
    if os.path.exists(out):
        return out
    go = shutil.which("go")
    if not go:
        raise KernelTestError("go is missing (for the seed server): apt-get install golang-go (make test-kernels does)")
    with tempfile.TemporaryDirectory(prefix="httptrace-seed-") as tmp:
        built = os.path.join(tmp, "seed-server")
        env = dict(os.environ, CGO_ENABLED="0", GOOS="linux", GOARCH=arch, GOFLAGS="", GOPROXY="off",
                   GOPATH=os.path.join(tmp, "gopath"), GOCACHE=os.path.join(CACHE, "gocache"))
        done = subprocess.run([go, "build", "-o", built, "."], cwd=SEED_SOURCE, env=env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise KernelTestError(f"go build of the seed server failed:\n{done.stderr}")
        if not is_static(built):
            raise KernelTestError("the seed server came out dynamically linked despite CGO_ENABLED=0")
        if elf_machine(built) != ARCHES[arch].uname:
            raise KernelTestError(f"the seed server came out for {elf_machine(built)}, not {arch}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.move(built, out)
    return out


# ---- initramfs -----------------------------------------------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One entry of a newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    pad = lambda n: b"\0" * (-n % 4)  # noqa: E731
    return header + encoded + pad(len(header) + len(encoded)) + data + pad(len(data))


def static_busybox(guest: Guest) -> str:
    """A static busybox of the guest's arch: the host's own for the host's arch, else busybox-static of
    that arch from the suite's archive (downloaded and unpacked, not installed), once."""
    if guest.spec == HOST_ARCH:
        return BUSYBOX
    out = os.path.join(CACHE, "busybox", cache_name(guest.suite, guest.arch), "busybox")
    if os.path.exists(out):
        return out
    log(f"fetching busybox-static {guest.arch} from {guest.suite}")
    with tempfile.TemporaryDirectory(prefix="httptrace-busybox-") as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user writes the download here
        (deb,) = suite_apt(guest.suite, guest.arch).download("busybox-static", tmp)
        subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "tree")], check=True)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        shutil.copyfile(os.path.join(tmp, "tree", "bin", "busybox"), out + ".tmp")
        os.replace(out + ".tmp", out)
    return out


def build_initramfs(kernel: Kernel, busybox_path: str, config: dict[str, str], path: str) -> None:
    if not is_static(busybox_path):
        raise KernelTestError(f"{busybox_path} is dynamically linked: install busybox-static")
    with open(busybox_path, "rb") as f:
        busybox = f.read()
    with open(os.path.join(HERE, "init.sh"), "rb") as f:
        init = f.read()
    conf = "".join(f"{k}='{v}'\n" for k, v in config.items()).encode()
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("modules", stat.S_IFDIR | 0o755, b""),
               ("bin/busybox", stat.S_IFREG | 0o755, busybox), ("init", stat.S_IFREG | 0o755, init),
               ("config", stat.S_IFREG | 0o644, conf)]
    for module in kernel.modules:
        with open(module, "rb") as f:
            entries.append((f"modules/{os.path.basename(module)}", stat.S_IFREG | 0o644, f.read()))
    with open(path, "wb") as out:
        for ino, (name, mode, data) in enumerate(entries, 1):
            out.write(_cpio_entry(name, mode, data, ino))
        out.write(_cpio_entry("TRAILER!!!", 0))


# ---- the scratch directory -----------------------------------------------------------------------

GUEST_SH = """#!/bin/sh
# Run by init.sh inside the guest, chrooted into the Debian {suite} userland (read-only); this directory
# is {dir} there (read-write).
cd {dir}
export PATH="{dir}/venv/bin:$PATH" NO_COLOR=1
echo "httptrace-guest: Debian {suite} userland, python $(python -c 'import platform; print(platform.python_version())')"
{command}
"""
GUEST_CHECK = "exec python -u {dir}/guest_check.py --out {dir} --family {family} --seed-server {dir}/seed-server"


def prepare_scratch(guest: Guest, land: Userland, wheel: str, scratch: str, command: str | None = None) -> None:
    _remove_tree(scratch)
    dependencies = dependency_wheels(wheel, land)
    os.makedirs(scratch)
    shutil.copytree(dependency_venv(land, dependencies), os.path.join(scratch, "venv"), symlinks=True)
    wheels = os.path.join(scratch, "wheels")
    os.makedirs(wheels)
    for path in glob.glob(os.path.join(dependencies, "*.whl")) + [wheel]:
        shutil.copy(path, wheels)
    shutil.copy(seed_server(guest.arch), os.path.join(scratch, "seed-server"))
    shutil.copyfile(os.path.join(HERE, "guest_check.py"), os.path.join(scratch, "guest_check.py"))
    with open(os.path.join(scratch, "guest.sh"), "w") as f:
        f.write(GUEST_SH.format(suite=guest.suite, dir=GUEST_DIR, command=command or GUEST_CHECK.format(
            dir=GUEST_DIR, family=guest.family)))
    install_venv(land, wheel, scratch)
    shutil.rmtree(wheels)


VENV = f"{GUEST_DIR}/venv"


def pip_install(*what: str) -> list[str]:
    return [f"{VENV}/bin/python", "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir",
            "--disable-pip-version-check", "--find-links", f"{GUEST_DIR}/wheels", *what]


def dependency_venv(land: Userland, dependencies: str) -> str:
    """A venv made by the userland's python3 -m venv, with the wheel's dependencies installed by its pip,
    once per userland and set of dependency wheels (under qemu-user both take a minute); each run copies
    it and pip installs only the wheel into the copy."""
    base = os.path.join(os.path.dirname(land.root), "venv")  # userland() removes it with the userland
    wheels = sorted(glob.glob(os.path.join(dependencies, "*.whl")))
    wanted = {"dependencies": [os.path.basename(path) for path in wheels]}
    with _locked(os.path.dirname(land.root)):
        if (_read_json(os.path.join(base, "stamp.json")) or {}).get("built") == wanted:
            return os.path.join(base, "venv")
        _remove_tree(base)
        os.makedirs(os.path.join(base, "wheels"))
        for path in wheels:
            shutil.copy(path, os.path.join(base, "wheels"))
        started = time.monotonic()
        requirements = [os.path.basename(path).split("-")[0] for path in wheels]
        _run_in_userland(land, base, (("python3 -m venv", ["/usr/bin/python3", "-m", "venv", VENV]),
                                      ("pip install", pip_install(*requirements))), "the dependencies")
        shutil.rmtree(os.path.join(base, "wheels"))
        _write_json(os.path.join(base, "stamp.json"), {"built": wanted,
                                                       "seconds": round(time.monotonic() - started)})
    return os.path.join(base, "venv")


def install_venv(land: Userland, wheel: str, scratch: str) -> None:
    """The wheel, installed by the userland's pip into the scratch directory's venv, on the host (chroot:
    much faster than in the emulated guest; another arch's under qemu-user), the scratch directory
    bind-mounted where the guest will mount it."""
    with _locked(os.path.dirname(land.root)):
        wheel_there = f"{GUEST_DIR}/wheels/{os.path.basename(wheel)}"
        _run_in_userland(land, scratch, (("pip install", pip_install(wheel_there)),), wheel)


def _run_in_userland(land: Userland, directory: str, steps, wheel: str) -> None:
    """Run the steps in the userland (chroot) with `directory` bind-mounted at GUEST_DIR; the caller holds
    the userland's lock."""
    mount_point = land.root + GUEST_DIR
    for point in sorted(_mounts_under(mount_point), reverse=True):  # left by a killed run
        subprocess.run(["umount", "-l", point], check=False)
    subprocess.run(["mount", "--bind", directory, mount_point], check=True)
    try:
        for what, argv in steps:
            done = chroot_run(land.root, argv)
            if done.returncode != 0:
                raise KernelTestError(_install_problem(what, land, wheel, done.stdout + done.stderr))
    finally:
        subprocess.run(["umount", mount_point], check=False)


def _install_problem(what: str, land: Userland, wheel: str, output: str) -> str:
    name = os.path.basename(wheel)
    tag = "-".join(name[:-len(".whl")].split("-")[-3:])
    problem = (f"{what} in the Debian {land.suite} {land.arch} userland (Python {land.python}, glibc {land.glibc}) "
               f"failed for {name}")
    if "is not a supported wheel" in output or "requires a different Python" in output:
        cp = "cp" + land.python_minor.replace(".", "")
        problem += (f": the wheel is tagged {tag}, which pip of Python {land.python} with glibc {land.glibc} "
                    f"does not accept (it takes {cp}-{cp}, or abi3 from cp3X up to {cp}, on manylinux_2_Y "
                    f"up to manylinux_{land.glibc.replace('.', '_')}; and the wheel's Requires-Python)")
    lines = [line for line in output.splitlines() if line.strip()]
    return problem + "\n" + "\n".join(lines[-12:])


# ---- booting -------------------------------------------------------------------------------------

def qemu_command(arch: Arch, kernel: Kernel, initramfs: str, root: str, scratch: str, cpus: int,
                 memory_mb: int) -> list[str]:
    return [
        arch.qemu, *arch.qemu_machine, "-accel", "tcg,thread=multi", "-smp", str(cpus), "-m", str(memory_mb),
        "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-serial", "stdio",
        "-kernel", kernel.vmlinuz, "-initrd", initramfs,
        "-append", f"console={arch.console} rdinit=/init panic=-1 oops=panic loglevel=4 random.trust_cpu=on "
                   "mitigations=off",
        "-fsdev", f"local,id=userland,path={root},security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=userland,mount_tag=userland",
        "-fsdev", f"local,id=scratch,path={scratch},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=scratch,mount_tag=scratch",
    ]


@dataclasses.dataclass
class Outcome:
    guest: Guest
    package: str = ""
    release: str = ""
    ok: bool = False
    prepare_seconds: float = 0.0  # on the host: caches, venv
    seconds: float = 0.0          # in QEMU, boot to power-off
    problem: str = ""
    artifacts: str = ARTIFACTS
    result: dict | None = None


def boot(guest: Guest, kernel: Kernel, land: Userland, scratch: str, timeout: int,
         echo: bool) -> tuple[int | None, float]:
    """Boot the guest; returns (guest.sh exit status or None when it never finished, seconds)."""
    initramfs = os.path.join(scratch, "initramfs.cpio")
    build_initramfs(kernel, static_busybox(guest), {"SCRATCH": GUEST_DIR, "TMPFS": " ".join(GUEST_TMPFS),
                             "MODULES": " ".join(_module_name(m) for m in kernel.modules),
                             "TIMEOUT": str(max(30, timeout - 30))}, initramfs)
    cmd = qemu_command(guest.spec, kernel, initramfs, land.root, scratch, cpus=min(2, os.cpu_count() or 1),
                       memory_mb=2048)
    console = os.path.join(scratch, "console.log")
    with open(os.path.join(scratch, "qemu-command.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    started = time.monotonic()
    with open(console, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def pump():
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if echo:
                    sys.stdout.write("  | " + line.decode(errors="replace").rstrip("\r\n") + "\n")
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on KeyboardInterrupt: never leave a QEMU behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(5)
        if timed_out:
            out.write(f"\n[run_kernels] guest killed after {timeout}s\n".encode())
            return None, time.monotonic() - started
    code_path = os.path.join(scratch, "exit_code")
    if not os.path.exists(code_path):
        return None, time.monotonic() - started
    with open(code_path) as f:
        return int(f.read().strip() or "255"), time.monotonic() - started


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            text = re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)|\r", "", f.read())  # the firmware's terminal codes
    except OSError:
        return f"(no {os.path.basename(path)})"
    return "\n".join(text.splitlines()[-lines:])


def run_guest(guest: Guest, wheel: str | None, timeout: int = DEFAULT_TIMEOUT, echo: bool = True,
              command: str | None = None) -> Outcome:
    """Boot one guest and run guest_check.py (or `command`, a shell line, in the scratch directory) with
    the wheel, which must be of the guest's arch."""
    outcome = Outcome(guest)
    started = time.monotonic()
    try:
        missing = missing_tools(guest.spec)
        if missing:
            raise KernelTestError(f"a {guest.arch} guest needs {', '.join(missing)} here (make test-kernels "
                                  "installs the packages; debootstrap, chroot and mount need root)")
        if wheel is None or wheel_arch(wheel) != guest.arch:
            raise KernelTestError(f"no {guest.spec.uname} wheel to test (given: {wheel}); make wheel "
                                  "builds one per arch")
        outcome.package = package = resolve_package(guest)
        outcome.artifacts = scratch = os.path.join(ARTIFACTS, f"{guest.suite}-{package}")
        kernel = fetch_kernel(package, suite_apt(guest.suite, guest.arch))
        outcome.release = kernel.release
        land = userland(guest.suite, guest.arch)
        log(f"{guest} -> {package} ({kernel.release}) with Debian {guest.suite} (Python {land.python}, "
            f"glibc {land.glibc}, {land.openssl}); artifacts in {os.path.relpath(scratch, ROOT)}")
        prepare_scratch(guest, land, wheel, scratch, command)
        outcome.prepare_seconds = time.monotonic() - started
        status, outcome.seconds = boot(guest, kernel, land, scratch, timeout, echo)
    except KernelTestError as exc:
        outcome.problem = str(exc)
        outcome.prepare_seconds = time.monotonic() - started
        return _kept(outcome)
    result_path = os.path.join(scratch, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            outcome.result = json.load(f)
    console = os.path.join(scratch, "console.log")
    if status is None:
        outcome.problem = (f"the guest did not finish (boot failure, hang or timeout after {outcome.seconds:.0f}s); "
                           f"console tail:\n{_tail(console)}")
    elif command is not None:
        outcome.ok = status == 0
        outcome.problem = "" if outcome.ok else f"the guest command exited with {status}"
    elif status != 0 or not outcome.result or not outcome.result.get("ok"):
        failed = [c for c in (outcome.result or {}).get("checks", []) if not c["ok"]]
        detail = "\n".join(f"  {c['name']}: {c['detail']}" for c in failed) or _tail(console)
        outcome.problem = f"guest checks failed (exit {status}):\n{detail}"
        if os.path.exists(os.path.join(scratch, "verifier.log")):
            outcome.problem += f"\nthe verifier's log of the failed load: {os.path.join(scratch, 'verifier.log')}"
    else:
        outcome.ok = True
    if outcome.ok:  # keep the logs, not the venv (failures keep both, to rerun qemu-command.txt)
        shutil.rmtree(os.path.join(scratch, "venv"), ignore_errors=True)
        os.unlink(os.path.join(scratch, "initramfs.cpio"))
    return _kept(outcome)


def _kept(outcome: Outcome) -> Outcome:
    """outcome.json in the artifacts: the verdict and the times, also for a guest that never booted."""
    if os.path.isdir(outcome.artifacts) and outcome.artifacts != ARTIFACTS:
        summary = {"guest": str(outcome.guest), "package": outcome.package, "release": outcome.release,
                   "ok": outcome.ok, "host_seconds": round(outcome.prepare_seconds, 1),
                   "guest_seconds": round(outcome.seconds, 1), "problem": outcome.problem}
        _write_json(os.path.join(outcome.artifacts, "outcome.json"), summary)
    return outcome


def build_wheels() -> dict[str, str]:
    log("make wheel")
    subprocess.run(["make", "-s", "wheel"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return wheels_by_arch(glob.glob(os.path.join(ROOT, "wheelhouse", "httptrace-*.whl")))


def wheel_arch(wheel: str) -> str:
    """The arch (a key of ARCHES) a wheel is for, from its platform tags (manylinux_2_17_aarch64...)."""
    tags = os.path.basename(wheel)[:-len(".whl")].split("-")[-1].split(".")
    for arch in ARCHES.values():
        if all(tag.endswith(f"_{arch.uname}") for tag in tags):
            return arch.name
    raise KernelTestError(f"{wheel}: its platform tags {'.'.join(tags)} name none of {', '.join(ARCHES)}")


def wheels_by_arch(wheels: list[str]) -> dict[str, str]:
    """Each guest gets the wheel of its arch: the wheels, by arch."""
    found: dict[str, str] = {}
    for wheel in wheels:
        arch = wheel_arch(wheel)
        if arch in found:
            raise KernelTestError(f"two wheels for {arch}: {found[arch]} and {wheel}")
        found[arch] = wheel
    return found


def missing_tools(arch: Arch) -> list[str]:
    """The Debian packages (or root) a guest of this arch needs here and does not have."""
    needs = [(arch.qemu_package, shutil.which(arch.qemu)), ("debootstrap", shutil.which("debootstrap")),
             ("golang-go", shutil.which("go")), ("root", os.geteuid() == 0)]
    if arch == HOST_ARCH:
        needs.append(("busybox-static", os.path.exists(BUSYBOX)))
    else:  # the userland's programs run on the host (debootstrap, the venv) under qemu-user
        needs.append(("qemu-user-static", os.path.exists(f"/usr/lib/binfmt.d/qemu-{arch.uname}.conf")))
    return [name for name, ok in needs if not ok]


def select_guests(listed: list[Guest], wanted: list[str]) -> list[Guest]:
    """--guest: a whole kernels.txt line, or a word picking the listed guests whose line contains it."""
    chosen = []
    for want in wanted:
        if len(want.split()) in (3, 4):
            chosen.append(parse_guest(want, "--guest "))
            continue
        matches = [g for g in listed if want in str(g).split() or want in g.kernel]
        if not matches:
            raise SystemExit(f"--guest {want!r}: no line of kernels.txt has it (or give 'PACKAGE SUITE FAMILY [ARCH]')")
        chosen += [g for g in matches if g not in chosen]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", action="append",
                        help="a wheel to test, in the guests of its arch (its platform tag); repeatable "
                             "(default: build them with make wheel)")
    parser.add_argument("--kernels", default=KERNELS_FILE, help="list of guests (default: %(default)s)")
    parser.add_argument("--guest", action="append", metavar="LINE",
                        help="run this guest, a line as in kernels.txt ('PACKAGE SUITE FAMILY [ARCH]'), or the "
                             "listed guests whose line has this word (a suite, a package, an arch); repeatable")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per guest")
    parser.add_argument("--quiet", action="store_true", help="do not echo the guest console")
    parser.add_argument("--guest-command", metavar="SHELL",
                        help="run this shell line in the guest instead of guest_check.py (to investigate: "
                             "the wheel's venv is first on PATH, the cwd is the scratch directory)")
    args = parser.parse_args(argv)
    listed = read_guest_list(args.kernels)
    guests = select_guests(listed, args.guest) if args.guest else listed
    try:
        wheels = wheels_by_arch(args.wheel) if args.wheel else build_wheels()
    except KernelTestError as exc:
        log(str(exc))
        return 2
    outcomes = []
    for guest in guests:
        outcome = run_guest(guest, wheels.get(guest.arch), args.timeout, echo=not args.quiet,
                            command=args.guest_command)
        outcomes.append(outcome)
        log(f"{'PASS' if outcome.ok else 'FAIL'} {guest.suite} {guest.arch} {outcome.package} ({outcome.release}): "
            f"{outcome.prepare_seconds:.0f}s on the host, {outcome.seconds:.0f}s in the guest; "
            f"artifacts: {os.path.relpath(outcome.artifacts, ROOT)}")
        if outcome.problem:
            log(outcome.problem)
    passed = sum(o.ok for o in outcomes)
    print(f"guests: {passed} passed, {len(outcomes) - passed} failed")
    for o in outcomes:
        print(f"  {'PASS' if o.ok else 'FAIL'} {o.guest.suite:9} {o.guest.arch:5} {o.release or o.guest.kernel:24} "
              f"{o.guest.family:7} host {o.prepare_seconds:4.0f}s  guest {o.seconds:4.0f}s")
    return 0 if outcomes and passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
