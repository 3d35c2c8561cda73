#!/usr/bin/env python3
"""Boot each kernel of kernels.txt under QEMU and run guest_check.py on it with the built wheel.

    python tests/kernels/run_kernels.py [--wheel WHEEL] [--kernels FILE | --kernel PACKAGE ...]
                                        [--timeout S] [--quiet] [--guest-command SHELL]

For each kernel (a Debian image package, fetched with `apt-get download` and cached under cache/):
  * an initramfs is packed: busybox-static, the kernel's own virtio + 9p modules, init.sh;
  * a scratch directory artifacts/<package>/ gets a venv (made from the host's python) with the wheel
    installed, guest_check.py and guest.sh;
  * QEMU (software emulation: nested KVM does not boot here) boots the kernel; the guest mounts the host's
    / read-only over virtio-9p and the scratch directory read-write at the same path, chroots into it and
    runs guest.sh, so the host's python, curl and libraries run unchanged on the guest kernel;
  * the serial console is kept as artifacts/<package>/console.log, and the guest leaves result.json (and
    verifier.log when a load failed) beside it.
Exit status 0 when every kernel booted and every guest check passed. Needs qemu-system-x86 and
busybox-static (`make test-kernels` installs them). The guest runs as root whoever runs this.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNELS_FILE = os.path.join(HERE, "kernels.txt")
CACHE = os.path.join(HERE, "cache")
ARTIFACTS = os.path.join(HERE, "artifacts")
BUSYBOX = "/bin/busybox"
QEMU = "qemu-system-x86_64"
# What init.sh needs from the kernel's modules; their dependencies are added from each module's modinfo.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
DEFAULT_TIMEOUT = 540  # seconds for one guest, boot to power-off


class KernelTestError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[kernels] {msg}", flush=True)


# ---- kernels.txt and apt -------------------------------------------------------------------------

def read_kernel_list(path: str = KERNELS_FILE) -> list[str]:
    with open(path) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


_apt_updated = False


def _apt_update() -> None:
    global _apt_updated
    if _apt_updated or os.geteuid() != 0:
        return
    log("apt-get update")
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    _apt_updated = True


def resolve_package(entry: str) -> str:
    """An exact package name as it is; with `*`, the newest package apt knows where `*` is a number
    (the ABI: `linux-image-6.1.0-*-amd64-unsigned` matches -56-amd64 but not -56-rt-amd64 or -cloud-)."""
    if "*" not in entry:
        return entry
    pattern = re.compile("[0-9]+".join(re.escape(part) for part in entry.split("*")) + "$")
    prefix = entry.split("*", 1)[0]
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "pkgnames", prefix], capture_output=True, text=True).stdout
        names = sorted((n for n in out.split() if pattern.match(n)), key=_natural)
        if names:
            return names[-1]
        if attempt == 0:
            _apt_update()
    raise KernelTestError(f"no apt package matches {entry!r} (is this a Debian machine with apt lists?)")


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


def fetch_kernel(package: str) -> Kernel:
    """The kernel image and the modules init.sh loads, from the cache or freshly from apt."""
    cache = os.path.join(CACHE, package)
    manifest = os.path.join(cache, "kernel.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            info = json.load(f)
        return Kernel(package, info["release"], os.path.join(cache, "vmlinuz"),
                      [os.path.join(cache, "modules", f"{m}.ko") for m in info["modules"]])
    log(f"fetching {package} with apt-get download")
    with tempfile.TemporaryDirectory(prefix="httptrace-kernel-") as tmp:
        os.chmod(tmp, 0o755)
        for attempt in range(2):
            got = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True)
            if got.returncode == 0:
                break
            if attempt == 0:
                _apt_update()
        else:
            raise KernelTestError(f"apt-get download {package} failed:\n{got.stdout}{got.stderr}")
        (deb,) = glob.glob(os.path.join(tmp, "*.deb"))
        tree = os.path.join(tmp, "tree")
        subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)
        images = glob.glob(os.path.join(tree, "boot", "vmlinuz-*"))
        if len(images) != 1:
            raise KernelTestError(f"{package}: expected one /boot/vmlinuz-*, found {images}")
        release = os.path.basename(images[0])[len("vmlinuz-"):]
        available = {_module_name(p): p for p in glob.glob(os.path.join(tree, "lib", "modules", release, "**",
                                                                         "*.ko*"), recursive=True)}
        builtin_path = os.path.join(tree, "lib", "modules", release, "modules.builtin")
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
        os.makedirs(CACHE, exist_ok=True)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(staging, cache)
    log(f"cached {package} ({release}) in {os.path.relpath(cache, ROOT)}")
    return fetch_kernel(package)


# ---- initramfs -----------------------------------------------------------------------------------

def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One entry of a newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % v for v in fields)
    pad = lambda n: b"\0" * (-n % 4)  # noqa: E731
    return header + encoded + pad(len(header) + len(encoded)) + data + pad(len(data))


def build_initramfs(kernel: Kernel, config: dict[str, str], path: str) -> None:
    from elftools.elf.elffile import ELFFile

    with open(BUSYBOX, "rb") as f:
        if any(seg["p_type"] == "PT_INTERP" for seg in ELFFile(f).iter_segments()):
            raise KernelTestError(f"{BUSYBOX} is dynamically linked: install busybox-static")
        f.seek(0)
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
# Run by init.sh inside the guest, chrooted into the host's / (read-only) with this directory read-write.
cd "{scratch}"
export PATH="{scratch}/venv/bin:$PATH"
echo "httptrace-guest: python $(python -c 'import sys; print(sys.version.split()[0])')"
{command}
"""
GUEST_CHECK = 'exec python -u "{scratch}/guest_check.py" --out "{scratch}"'


def host_python() -> str:
    """The system python the venv is made from: the guest runs it from the host's / as it is."""
    base = getattr(sys, "_base_executable", sys.executable)
    return os.path.realpath(base)


def prepare_scratch(wheel: str, scratch: str, command: str | None = None) -> None:
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    venv = os.path.join(scratch, "venv")
    subprocess.run([host_python(), "-m", "venv", venv], check=True)
    pip = subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", wheel], capture_output=True, text=True)
    if pip.returncode != 0:
        raise KernelTestError(f"pip install {wheel} failed:\n{pip.stdout}{pip.stderr}")
    shutil.copyfile(os.path.join(HERE, "guest_check.py"), os.path.join(scratch, "guest_check.py"))
    with open(os.path.join(scratch, "guest.sh"), "w") as f:
        f.write(GUEST_SH.format(scratch=scratch, command=command or GUEST_CHECK.format(scratch=scratch)))


# ---- booting -------------------------------------------------------------------------------------

def qemu_command(kernel: Kernel, initramfs: str, scratch: str, cpus: int, memory_mb: int) -> list[str]:
    return [
        QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(cpus), "-m", str(memory_mb),
        "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-serial", "stdio",
        "-kernel", kernel.vmlinuz, "-initrd", initramfs,
        "-append", "console=ttyS0 rdinit=/init panic=-1 oops=panic loglevel=4 random.trust_cpu=on mitigations=off",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=scratch,path={scratch},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=scratch,mount_tag=scratch",
    ]


@dataclasses.dataclass
class Outcome:
    package: str
    release: str = ""
    ok: bool = False
    seconds: float = 0.0
    problem: str = ""
    artifacts: str = ""
    result: dict | None = None


def boot(kernel: Kernel, scratch: str, timeout: int, echo: bool) -> tuple[int | None, float]:
    """Boot the guest; returns (guest.sh exit status or None when it never finished, seconds)."""
    initramfs = os.path.join(scratch, "initramfs.cpio")
    build_initramfs(kernel, {"SCRATCH": scratch, "MODULES": " ".join(_module_name(m) for m in kernel.modules),
                             "TIMEOUT": str(max(30, timeout - 30))}, initramfs)
    cmd = qemu_command(kernel, initramfs, scratch, cpus=min(2, os.cpu_count() or 1), memory_mb=2048)
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
        return "(no console log)"
    return "\n".join(text.splitlines()[-lines:])


def run_kernel(entry: str, wheel: str, timeout: int = DEFAULT_TIMEOUT, echo: bool = True,
               command: str | None = None) -> Outcome:
    """Boot one kernel and run guest_check.py (or `command`, a shell line, in the scratch directory)."""
    outcome = Outcome(entry, artifacts=ARTIFACTS)
    try:
        outcome.package = package = resolve_package(entry)
        outcome.artifacts = scratch = os.path.join(ARTIFACTS, package)
        kernel = fetch_kernel(package)
        outcome.release = kernel.release
        log(f"{entry} -> {package} ({kernel.release}); scratch and artifacts in {os.path.relpath(scratch, ROOT)}")
        prepare_scratch(wheel, scratch, command)
        status, outcome.seconds = boot(kernel, scratch, timeout, echo)
    except KernelTestError as exc:
        outcome.problem = str(exc)
        return outcome
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
    if outcome.ok:  # keep the logs, not the 30 MB venv (failures keep both, to rerun qemu-command.txt)
        shutil.rmtree(os.path.join(scratch, "venv"), ignore_errors=True)
        os.unlink(os.path.join(scratch, "initramfs.cpio"))
    return outcome


def build_wheel() -> str:
    log("make wheel")
    subprocess.run(["make", "-s", "wheel"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return find_wheel()


def find_wheel() -> str:
    wheels = glob.glob(os.path.join(ROOT, "wheelhouse", "httptrace-*.whl"))
    if len(wheels) != 1:
        raise KernelTestError(f"expected one wheel in wheelhouse/, found {wheels}")
    return wheels[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", help="the wheel to test (default: build it with make wheel)")
    parser.add_argument("--kernels", default=KERNELS_FILE, help="list of kernel packages (default: %(default)s)")
    parser.add_argument("--kernel", action="append", metavar="PACKAGE",
                        help="boot this package (an entry as in kernels.txt) instead of the list; repeatable")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per guest")
    parser.add_argument("--quiet", action="store_true", help="do not echo the guest console")
    parser.add_argument("--guest-command", metavar="SHELL",
                        help="run this shell line in the guest instead of guest_check.py (to investigate: "
                             "the wheel's venv is first on PATH, the cwd is the scratch directory)")
    args = parser.parse_args(argv)
    if not shutil.which(QEMU):
        log(f"{QEMU} is missing: apt-get install qemu-system-x86 busybox-static (make test-kernels does)")
        return 2
    wheel = args.wheel or build_wheel()
    entries = args.kernel or read_kernel_list(args.kernels)
    outcomes = []
    for entry in entries:
        outcome = run_kernel(entry, wheel, args.timeout, echo=not args.quiet, command=args.guest_command)
        outcomes.append(outcome)
        verdict = "PASS" if outcome.ok else "FAIL"
        log(f"{verdict} {outcome.package} ({outcome.release}) in {outcome.seconds:.0f}s; "
            f"artifacts: {os.path.relpath(outcome.artifacts, ROOT)}")
        if outcome.problem:
            log(outcome.problem)
    passed = sum(o.ok for o in outcomes)
    print(f"kernels: {passed} passed, {len(outcomes) - passed} failed")
    return 0 if outcomes and passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
