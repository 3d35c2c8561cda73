"""The wheel in other distributions on other kernels: each guest of kernels.txt boots under QEMU with its
Debian userland, pip installs the wheel with that userland's python3, and runs guest_check.py.

One test per guest; it fails (never skips) when the guest cannot be prepared, does not boot, hangs, picks
another program family than kernels.txt says, or any guest check fails, naming the artifacts directory
(console.log, result.json, verifier.log, dmesg.log). Without QEMU, debootstrap or root it skips, except
under CI=true, where that is a failure: `make test` installs the tools.
The wheel is built once (`make wheel`) unless HTTPTRACE_WHEEL names one.
"""
from __future__ import annotations

import os
import shutil

import pytest

from . import run_kernels

GUESTS = run_kernels.read_guest_list()


@pytest.fixture(scope="module")
def wheel():
    missing = [tool for tool, ok in ((run_kernels.QEMU, shutil.which(run_kernels.QEMU)),
                                     (run_kernels.BUSYBOX, os.path.exists(run_kernels.BUSYBOX)),
                                     ("debootstrap", shutil.which("debootstrap")),
                                     ("go", shutil.which("go")),
                                     ("root", os.geteuid() == 0)) if not ok]
    if missing:
        message = (f"{', '.join(missing)} missing: the kernel tests need qemu-system-x86, busybox-static, "
                   "debootstrap and golang-go (make test-kernels installs them), and root")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    given = os.environ.get("HTTPTRACE_WHEEL")
    return given if given else run_kernels.build_wheel()


def test_unit_tests_pass_on_debian_11s_python_3_9(wheel):
    """Python 3.9 is the oldest httptrace supports: the unit tests run with Debian 11's own python3."""
    done = run_kernels.run_unit_tests("bullseye")
    summary = done.stdout.strip().splitlines()[-1:] or [""]
    assert done.returncode == 0, f"{' '.join(done.args[-4:])} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    assert " passed" in summary[0] and "failed" not in summary[0], summary
    print(f"Debian 11's Python: {summary[0]}")


@pytest.mark.parametrize("guest", GUESTS, ids=[f"{g.suite}-{g.kernel}" for g in GUESTS])
def test_wheel_in_guest(guest, wheel):
    outcome = run_kernels.run_guest(guest, wheel)
    where = os.path.relpath(outcome.artifacts, run_kernels.ROOT)
    if not outcome.ok:  # pytest.fail: the message alone, not the Outcome's repr
        pytest.fail(f"{guest.suite} {outcome.package or guest.kernel} ({outcome.release or 'not booted'}; "
                    f"{outcome.prepare_seconds:.0f}s on the host, {outcome.seconds:.0f}s in the guest): "
                    f"{outcome.problem}\nartifacts: {where}", pytrace=False)
    checks = outcome.result["checks"]
    assert checks and all(c["ok"] for c in checks)
    assert outcome.result["family"] == guest.family, f"programs: {outcome.result['family']}, want {guest.family}"
    print(f"{guest.suite} {outcome.package} ({outcome.release}): {len(checks)} guest checks passed, family "
          f"{guest.family}; {outcome.prepare_seconds:.0f}s on the host, {outcome.seconds:.0f}s in the guest")
