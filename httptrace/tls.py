"""TLS plaintext: find the OpenSSL libraries processes use and probe their read/write calls.

An uprobe on a file covers every process that maps it, including ones started later, so we attach once
per distinct file (by inode: /lib and /usr/lib are the same files on merged-/usr systems). Programs with
OpenSSL linked in statically are found by their own symbol table (pyelftools), when it has one. Go
programs are recognised among the executables too and handed to gotls.py (Go's crypto/tls is not
OpenSSL).
"""
from __future__ import annotations

import glob
import mmap
import os
import re
import subprocess
import threading
import time

from ._log import get_logger
from .goelf import find
from .libbpf import BpfObject, Link

log = get_logger("httptrace.tls")

LIBSSL_NAME = re.compile(r"/libssl\.so\.(3|1\.1)$")
# (function, entry program); every function also gets the family's return probe (TlsProbes.exit_program).
PROBES = (("SSL_write", "ssl_write_enter"), ("SSL_write_ex", "ssl_write_ex_enter"),
          ("SSL_read", "ssl_read_enter"), ("SSL_read_ex", "ssl_read_ex_enter"))


def system_libraries() -> list[str]:
    """libssl.so.3 / libssl.so.1.1 known to the dynamic linker."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    paths = [line.rsplit("=>", 1)[1].strip() for line in out.splitlines() if "=>" in line]
    return [p for p in paths if LIBSSL_NAME.search(p)]


def mapped_libraries() -> list[str]:
    """libssl files mapped by running processes (virtualenvs, containers, vendored copies)."""
    found = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as f:
                for line in f:
                    if "libssl.so" in line:
                        path = line.split(None, 5)[-1].strip()
                        if LIBSSL_NAME.search(path):
                            root = os.path.dirname(os.path.dirname(maps)) + "/root"
                            found.add(root + path if not os.path.exists(path) else path)
        except OSError:
            continue
    return sorted(found)


MAX_BINARY_SIZE = 512 << 20  # reading a symbol table costs time: skip giants
EXECUTABLES_BUDGET_S = 0.02  # programs examined per re-scan: bounds its CPU and how long close() waits


def has_own_openssl(path: str) -> bool:
    """Does this executable define SSL_read/SSL_write itself (OpenSSL linked in statically)?"""
    # Imported here: rarely needed, and 27 ms of start-up otherwise.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        if os.path.getsize(path) > MAX_BINARY_SIZE:
            return False
        with open(path, "rb") as f:
            # Most programs do not even name the function, and those that do usually import it from
            # libssl.so (probed already): a byte search over the mapped file answers in about a
            # millisecond, where reading the symbol table takes up to ~100 ms (bash: 86, nginx: 28).
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as image:
                if find(image, b"SSL_write\0") < 0 or find(image, b"libssl.so") >= 0:
                    return False
            elf = ELFFile(f)
            for name in (".symtab", ".dynsym"):
                table = elf.get_section_by_name(name)
                if table is None or not hasattr(table, "get_symbol_by_name"):
                    continue
                found = [table.get_symbol_by_name(fn) for fn in ("SSL_read", "SSL_write")]
                if all(sym and sym[0]["st_shndx"] != "SHN_UNDEF" and sym[0]["st_value"] for sym in found):
                    return True
    except (OSError, ELFError, ValueError):
        pass
    return False


def running_executables() -> list[str]:
    """/proc/PID/exe of every process, newest first (the re-scan's budget may not reach the end): attaching
    through it reaches files inside containers too."""
    return sorted(glob.glob("/proc/[0-9]*/exe"), key=lambda p: int(p.split("/")[2]), reverse=True)


class TlsProbes:
    """The uprobes of one BpfObject; `refresh()` attaches to libraries seen since the last call."""

    def __init__(self, obj: BpfObject, exit_program: str = "ssl_exit"):
        """exit_program: the loaded family's return probe (ssl_exit, or compat_ssl_exit)."""
        from .gotls import GoTlsProbes

        self._obj = obj
        self._exit_program = exit_program
        self.go = GoTlsProbes(obj, compat=exit_program.startswith("compat_"))
        self._seen: set[tuple[int, int]] = set()
        self.libraries: list[str] = []
        self.links: list[Link] = []
        # Re-scans run in their own thread: reading /proc and symbol tables must never hold up the
        # thread that drains the ring buffer (a 50 ms stall there overflows it at 700 MB/s). The lock
        # keeps close() from destroying the object under an attach.
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def rescan_every(self, seconds: float) -> None:
        """Call refresh() every `seconds` in a background thread, until close()."""
        def run() -> None:
            while not self._closed.wait(seconds):
                try:
                    self.refresh()
                except Exception as exc:   # discovery is best effort; capture goes on
                    log.warning("TLS library re-scan failed", error=str(exc))

        threading.Thread(target=run, name="httptrace-tls-rescan", daemon=True).start()

    def close(self) -> None:
        """Stop the re-scans; waits for one under way (bounded by its time budget) to finish."""
        self._closed.set()
        with self._lock:
            pass

    def refresh(self, executables: bool = True, budget_s: float = EXECUTABLES_BUDGET_S,
                static_openssl: bool = True) -> list[str]:
        """Attach to libraries and, with `executables`, to Go programs and (with `static_openssl`)
        statically linked OpenSSL programs not seen before. Programs are examined for at most
        `budget_s` per call (plus the one under way), the rest at the next: it bounds both the CPU a
        re-scan takes and how long close() may wait for it."""
        with self._lock:
            if self._closed.is_set():
                return []
            return self._refresh(executables, budget_s, static_openssl)

    def _refresh(self, executables: bool, budget_s: float, static_openssl: bool) -> list[str]:
        added = []
        libraries = system_libraries() + mapped_libraries()
        deadline = None   # the budget is for programs: attaching to libraries does not use it up
        for path in libraries + (running_executables() if executables else []):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in self._seen:
                continue
            is_library = path in libraries
            shown = path if is_library else os.path.realpath(path)  # the program, not /proc/PID/exe
            if not is_library:
                deadline = deadline or time.monotonic() + budget_s
                if time.monotonic() > deadline:
                    break
                if self.go.examine(path, shown):
                    self._seen.add((st.st_dev, st.st_ino))
                    continue
                if not static_openssl:   # a later re-scan looks at it for OpenSSL (symbol tables are slow)
                    continue
            self._seen.add((st.st_dev, st.st_ino))
            if not is_library and not has_own_openssl(path):
                continue
            try:
                self._attach(path)
            except Exception as exc:  # a file without the symbols (or an odd build) is skipped, not fatal
                log.warning("cannot probe TLS library", path=shown, error=str(exc))
                continue
            self.libraries.append(shown)
            added.append(shown)
            log.info("probing TLS library", path=shown)
        return added

    def _attach(self, path: str) -> None:
        links = []
        try:
            for function, entry in PROBES:
                links.append(self._obj.program(entry).attach_uprobe(path, function))
                links.append(self._obj.program(self._exit_program).attach_uprobe(path, function, retprobe=True))
        except BaseException:
            for link in links:
                link.destroy()
            raise
        self.links += links
        self._obj.links += links
