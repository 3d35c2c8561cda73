"""Can this host run the tracer? Each check gives one clear answer; `--check` and Tracer share them.

The Tracer calls `require_environment()` before touching libbpf, so a missing privilege or missing BTF
is one readable EnvironmentProblem instead of a verifier log or a traceback.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass
from importlib import resources

from .errors import EnvironmentProblem

TRACEFS = "/sys/kernel/tracing"
DEFAULT_BTF = "/sys/kernel/btf/vmlinux"
# bpf_loop (5.17) walks large buffers; bpf_task_pt_regs (5.15) reads syscall args on exit.
MIN_KERNEL = (5, 17)

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def btf_path() -> str:
    """Kernel BTF to relocate against; HTTPTRACE_BTF overrides it (a BTF file for kernels lacking one)."""
    return os.environ.get("HTTPTRACE_BTF", DEFAULT_BTF)


def object_path(name: str = "httptrace.bpf.o") -> str:
    return os.environ.get("HTTPTRACE_BPF_OBJECT") or str(resources.files("httptrace.bpf") / name)


def check_kernel() -> CheckResult:
    release = platform.release()
    try:
        version = tuple(int(part) for part in release.split("-")[0].split(".")[:2])
    except ValueError:
        version = (0, 0)
    ok = version >= MIN_KERNEL
    return CheckResult("kernel", ok, f"Linux {release}",
                       "" if ok else f"httptrace needs Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer")


def check_btf() -> CheckResult:
    path = btf_path()
    if os.path.isfile(path):
        return CheckResult("btf", True, f"kernel BTF at {path}")
    return CheckResult("btf", False, f"no kernel BTF at {path}",
                       "use a kernel built with CONFIG_DEBUG_INFO_BTF=y, or point HTTPTRACE_BTF at a BTF file")


def _effective_caps() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges() -> CheckResult:
    caps = _effective_caps()
    has = lambda cap: bool(caps >> cap & 1)  # noqa: E731
    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        return CheckResult("privileges", True, f"{who} with CAP_BPF and CAP_PERFMON")
    return CheckResult("privileges", False, f"uid {os.geteuid()} lacks CAP_BPF and CAP_PERFMON",
                       "run as root (sudo), or grant CAP_BPF,CAP_PERFMON,CAP_DAC_READ_SEARCH")


def ensure_tracefs() -> CheckResult:
    """Syscall tracepoints are found through tracefs; mount it when nobody has."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return CheckResult("tracefs", True, f"mounted at {TRACEFS}")
    if os.path.ismount(TRACEFS):
        return CheckResult("tracefs", False, f"tracefs at {TRACEFS} is not readable by uid {os.geteuid()}",
                           "run as root")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) == 0:
        return CheckResult("tracefs", True, f"mounted by httptrace at {TRACEFS}")
    err = ctypes.get_errno()
    return CheckResult("tracefs", False, f"tracefs is not mounted and mounting it failed: {os.strerror(err)}",
                       f"mount it: mount -t tracefs nodev {TRACEFS}")


def check_ring_buffer() -> CheckResult:
    from .libbpf import ring_buffer_supported

    if ring_buffer_supported():
        return CheckResult("ring buffer", True, "BPF ring buffer supported")
    return CheckResult("ring buffer", False, "the kernel has no BPF ring buffer", "Linux 5.8 or newer is needed")


def check_objects() -> CheckResult:
    """Load and attach every program, then detach: the proof that the verifier accepts them here."""
    from .tracer import Tracer

    try:
        with Tracer(ports=[1]) as tracer:
            count = len(tracer.attached_programs)
            libraries = tracer.tls_libraries
    except Exception as exc:  # reported, not raised: this is a report
        return CheckResult("objects", False, f"loading {object_path()} failed: {exc}")
    tls = ", ".join(libraries) if libraries else "none found"
    return CheckResult("objects", True, f"{object_path()}: {count} programs loaded and attached; "
                                        f"TLS libraries probed: {tls}")


def require_environment() -> None:
    """Raise the first problem that makes tracing impossible, in the order a user would fix them."""
    for check in (check_privileges, check_btf, check_kernel, ensure_tracefs):
        result = check()
        if not result.ok:
            raise EnvironmentProblem(result.detail, result.fix)


def run_checks() -> list[CheckResult]:
    results = [check_privileges(), check_btf(), check_kernel(), ensure_tracefs()]
    if all(r.ok for r in results):
        results.append(check_ring_buffer())
        results.append(check_objects())
    return results
