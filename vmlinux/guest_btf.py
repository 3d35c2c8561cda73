"""vmlinux/<arch>/vmlinux.h for an arch this host does not run: the BTF of a Debian kernel, read in QEMU.

    python vmlinux/guest_btf.py arm64     # what `make vmlinux ARCH=arm64` runs

Debian's arm64 vmlinuz is a raw Image with no ELF .BTF section to dump, so the kernel is booted (TCG,
a few seconds) with an initramfs of busybox and the virtio block modules, which copies
/sys/kernel/btf/vmlinux onto a raw disk; `bpftool btf dump file <that> format c` writes the header.
The kernel and busybox come from Debian with `apt-get download` through an apt of their own under the
cache (build.foreign_apt: ${HTTPTRACE_CACHE:-/var/cache/httptrace}/apt/<suite>-<arch>): the host's apt
and dpkg architectures stay as they are. The raw BTF is kept in the cache beside the kernel.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from build import foreign_apt  # noqa: E402  (the apt build.py fetches arm64 Python headers with)

CACHE = os.environ.get("HTTPTRACE_CACHE") or "/var/cache/httptrace"

# arch: (Debian arch, suite, kernel package with `*` for the ABI number, QEMU command before -kernel)
GUESTS = {
    "arm64": ("arm64", "bookworm", "linux-image-6.1.0-*-arm64-unsigned",
              ["qemu-system-aarch64", "-machine", "virt", "-accel", "tcg,thread=multi",
               # pauth-impdef: plain `max` emulates QARMA pointer authentication, ~6x slower to boot
               "-cpu", "max,pauth-impdef=on", "-smp", "2", "-m", "1024", "-nic", "none",
               "-device", "virtio-blk-device,drive=out"], "ttyAMA0"),
}
MODULES = ("virtio_mmio", "virtio_blk")  # the virt machine's virtio transport and disk: modules in Debian
BTF_MAGIC = 0xEB9F

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /sys /dev
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in {modules}; do /bin/busybox insmod /modules/$m.ko || echo "guest-btf: insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
/bin/busybox dd if=/sys/kernel/btf/vmlinux of=/dev/vda bs=1M 2>/dev/null && /bin/busybox sync &&
  echo "guest-btf: size=$(/bin/busybox stat -c %s /sys/kernel/btf/vmlinux)"
/bin/busybox poweroff -f
"""


def log(message: str) -> None:
    print(f"guest_btf: {message}", file=sys.stderr, flush=True)


class Apt:
    """apt-get for one Debian suite and architecture, with sources, lists and downloads of its own."""

    def __init__(self, suite: str, arch: str):
        self.options = foreign_apt(arch, suite)
        self.updated = False

    def update(self) -> None:
        if not self.updated:
            subprocess.run(["apt-get", *self.options, "update", "-qq"], check=True)
            self.updated = True

    def newest(self, pattern: str) -> str:
        """The newest package matching `pattern`, where `*` is a number (not -rt- or -cloud-)."""
        self.update()
        regex = re.compile("[0-9]+".join(re.escape(p) for p in pattern.split("*")) + "$")
        out = subprocess.run(["apt-cache", *self.options, "pkgnames", pattern.split("*")[0]],
                             capture_output=True, text=True, check=True).stdout
        names = [n for n in out.split() if regex.match(n)]
        if not names:
            sys.exit(f"guest_btf: no package matches {pattern}")
        return max(names, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])

    def extract(self, package: str, tree: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)  # apt downloads as user _apt where it can
            subprocess.run(["apt-get", *self.options, "download", "-qq", package], cwd=tmp, check=True,
                           stderr=subprocess.DEVNULL)
            (deb,) = glob.glob(os.path.join(tmp, "*.deb"))
            subprocess.run(["dpkg-deb", "-x", deb, tree], check=True)


def _cpio(name: str, mode: int, data: bytes = b"", ino: int = 0) -> bytes:
    """One entry of a newc cpio archive, the initramfs format."""
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08x" % v for v in fields) + name.encode() + b"\0"
    return header + b"\0" * (-len(header) % 4) + data + b"\0" * (-len(data) % 4)


def _module_paths(tree: str) -> list[str]:
    """MODULES and what they depend on (from .modinfo), dependencies first."""
    from elftools.elf.elffile import ELFFile

    found = {os.path.basename(p)[:-3].replace("-", "_"): p
             for p in glob.glob(os.path.join(tree, "lib", "modules", "*", "**", "*.ko"), recursive=True)}
    order: list[str] = []

    def add(name: str) -> None:
        if name in order:
            return
        with open(found[name], "rb") as f:
            info = ELFFile(f).get_section_by_name(".modinfo").data()
        for item in info.split(b"\0"):
            if item.startswith(b"depends="):
                for dep in filter(None, item[len(b"depends="):].decode().split(",")):
                    add(dep)
        order.append(name)

    for name in MODULES:
        add(name)
    return [found[n] for n in order]


def initramfs(busybox: str, modules: list[str], path: str) -> None:
    names = [os.path.basename(m)[:-3] for m in modules]
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("modules", stat.S_IFDIR | 0o755, b"")]
    with open(busybox, "rb") as f:
        entries.append(("bin/busybox", stat.S_IFREG | 0o755, f.read()))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.format(modules=" ".join(names)).encode()))
    for module in modules:
        with open(module, "rb") as f:
            entries.append((f"modules/{os.path.basename(module)}", stat.S_IFREG | 0o644, f.read()))
    with open(path, "wb") as out:
        for ino, (name, mode, data) in enumerate(entries, 1):
            out.write(_cpio(name, mode, data, ino))
        out.write(_cpio("TRAILER!!!", 0))


def guest_btf(arch: str) -> str:
    """The raw BTF of the arch's kernel, from the cache or read in a freshly booted guest."""
    deb_arch, suite, pattern, qemu, console = GUESTS[arch]
    apt = Apt(suite, deb_arch)
    package = apt.newest(pattern)
    cached = os.path.join(CACHE, "vmlinux", package, "btf")
    if os.path.exists(cached):
        log(f"BTF of {package} from {cached}")
        return cached
    if not shutil.which(qemu[0]):
        sys.exit(f"guest_btf: {qemu[0]} not found (apt-get install qemu-system-arm)")
    with tempfile.TemporaryDirectory(prefix="guest-btf-") as tmp:
        kernel_tree, busybox_tree = os.path.join(tmp, "kernel"), os.path.join(tmp, "busybox")
        log(f"downloading {package} and busybox-static ({suite}, {deb_arch})")
        apt.extract(package, kernel_tree)
        apt.extract("busybox-static", busybox_tree)
        (vmlinuz,) = glob.glob(os.path.join(kernel_tree, "boot", "vmlinuz-*"))
        initrd, disk = os.path.join(tmp, "initrd"), os.path.join(tmp, "btf.raw")
        initramfs(os.path.join(busybox_tree, "bin", "busybox"), _module_paths(kernel_tree), initrd)
        with open(disk, "wb") as f:
            f.truncate(64 << 20)  # sparse; the BTF of a distribution kernel is 5-10 MB
        log(f"booting {os.path.basename(vmlinuz)} under {qemu[0]}")
        done = subprocess.run(
            [*qemu, "-drive", f"file={disk},format=raw,if=none,id=out", "-nographic", "-no-reboot",
             "-monitor", "none", "-serial", "stdio", "-kernel", vmlinuz, "-initrd", initrd,
             "-append", f"console={console} rdinit=/init panic=-1 loglevel=4"],
            capture_output=True, text=True, errors="replace", timeout=300, stdin=subprocess.DEVNULL)
        sizes = re.findall(r"guest-btf: size=(\d+)", done.stdout)
        if not sizes:
            sys.exit(f"guest_btf: the guest did not copy its BTF; its console:\n{done.stdout[-3000:]}")
        with open(disk, "rb") as f:
            btf = f.read(int(sizes[0]))
        if struct.unpack_from("<H", btf)[0] != BTF_MAGIC:
            sys.exit("guest_btf: what the guest copied is not BTF")
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        with open(cached + ".tmp", "wb") as f:
            f.write(btf)
        os.replace(cached + ".tmp", cached)
        log(f"{len(btf)} bytes of BTF from {package}, cached in {cached}")
        return cached


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in GUESTS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(GUESTS)}}}")
    arch = sys.argv[1]
    header = os.path.join(HERE, arch, "vmlinux.h")
    os.makedirs(os.path.dirname(header), exist_ok=True)
    with open(header + ".tmp", "w") as out:
        subprocess.run(["bpftool", "btf", "dump", "file", guest_btf(arch), "format", "c"], stdout=out, check=True)
    os.replace(header + ".tmp", header)
    log(f"wrote {os.path.relpath(header)}")


if __name__ == "__main__":
    main()
