"""Can this host run the tracer, and with which programs? Each check gives one clear answer.

`--check` prints them; the Tracer calls `require_environment()` before touching libbpf, so a missing
privilege or missing BTF is one readable EnvironmentProblem instead of a verifier log or a traceback,
and `choose_programs()` to pick the family of kernel programs it loads. Checks only ask: loading is
the tracer's (the `--check` line that loads the object lives in the CLI).
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

# The two program families of the object (see bpf/httptrace.bpf.c). The fast one needs these helpers
# (enum bpf_func_id); the compat one needs only what every kernel with a BPF ring buffer (5.8) has.
PROGRAM_FAMILIES = ("auto", "fast", "compat")
FAST_HELPERS = {"bpf_loop": 181, "bpf_task_pt_regs": 175, "bpf_get_current_task_btf": 158}

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39

# platform.machine() -> the name users know; each wheel carries the eBPF object and module of one.
ARCHES = {"x86_64": "x86-64", "aarch64": "arm64"}


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
    """The release, for the record: what the kernel can do is probed, not read off its version
    (distributions backport BPF features)."""
    return CheckResult("kernel", True, f"Linux {platform.release()}")


def check_arch(machine: str | None = None) -> CheckResult:
    """The CPU: the eBPF object reads its registers (bpf/arch.h), the module is built for it."""
    machine = machine or platform.machine()
    if machine in ARCHES:
        return CheckResult("arch", True, f"{ARCHES[machine]} ({machine})")
    return CheckResult("arch", False, f"{machine} is not supported",
                       f"httptrace runs on {' and '.join(ARCHES.values())}")


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
    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

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
    return CheckResult("ring buffer", False, "the kernel has no BPF ring buffer",
                       "httptrace needs Linux 5.8 or newer (or a kernel with the BPF ring buffer backported)")


def missing_fast_helpers() -> list[str]:
    from .libbpf import helper_supported

    return [name for name, helper_id in FAST_HELPERS.items() if not helper_supported(helper_id)]


def requested_programs(programs: str | None = None) -> str:
    """The family asked for: `programs`, else $HTTPTRACE_PROGRAMS, else auto."""
    requested = programs or os.environ.get("HTTPTRACE_PROGRAMS") or "auto"
    if requested not in PROGRAM_FAMILIES:
        raise ValueError(f"programs must be one of {', '.join(PROGRAM_FAMILIES)}, not {requested!r}")
    return requested


def choose_programs(requested: str = "auto") -> tuple[str, str]:
    """The program family to load, and why: 'fast' where the kernel has its helpers, else 'compat'."""
    requested = requested_programs(requested)
    if requested == "compat":
        return "compat", "asked for"
    missing = missing_fast_helpers()
    if requested == "fast":
        if missing:
            raise EnvironmentProblem(f"the fast programs need {', '.join(missing)}, which this kernel lacks",
                                     "use --programs auto or --programs compat")
        return "fast", "asked for"
    if missing:
        return "compat", f"kernel lacks {', '.join(missing)}"
    return "fast", "kernel has " + ", ".join(FAST_HELPERS)


def check_programs(requested: str = "auto") -> CheckResult:
    try:
        family, why = choose_programs(requested)
    except EnvironmentProblem as exc:
        return CheckResult("programs", False, exc.problem, exc.fix)
    return CheckResult("programs", True, f"{family} ({why})")


def require_environment() -> None:
    """Raise the first problem that makes tracing impossible, in the order a user would fix them."""
    for check in (check_arch, check_privileges, check_btf, ensure_tracefs, check_ring_buffer):
        result = check()
        if not result.ok:
            raise EnvironmentProblem(result.detail, result.fix)


def run_checks(programs: str = "auto") -> list[CheckResult]:
    """Every check that only asks; the caller adds loading the object when these pass."""
    results = [check_arch(), check_privileges(), check_btf(), check_kernel(), ensure_tracefs()]
    if all(r.ok for r in results):
        results += [check_ring_buffer(), check_programs(programs)]
    return results
