"""The wheel in other distributions on other kernels: each guest of kernels.txt boots under QEMU with its
Debian userland, pip installs the wheel with that userland's python3, and runs guest_check.py.

One test per guest; it fails (never skips) when the guest cannot be prepared, does not boot, hangs, picks
another program family than kernels.txt says, or any guest check fails, naming the artifacts directory
(console.log, result.json, verifier.log, dmesg.log). Without QEMU (qemu-system-x86, and for the arm64
guests qemu-system-arm and qemu-user-static), debootstrap or root, or without a wheel of the guest's arch,
it skips, except under CI=true, where that is a failure: `make test` installs the tools and builds both
wheels. The wheels are built once (`make wheel`) unless HTTPTRACE_WHEEL names them (whitespace-separated;
each guest gets the one whose platform tag is its arch's).
"""
from __future__ import annotations

import os

import pytest

from . import run_kernels

GUESTS = run_kernels.read_guest_list()


def cannot_run(message: str) -> None:
    """Skipped here, a failure under CI=true (which must run every guest)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def needs_tools(arch: run_kernels.Arch) -> None:
    missing = run_kernels.missing_tools(arch)
    if missing:
        cannot_run(f"{', '.join(missing)} missing: the {arch.name} guests need them (make test-kernels installs "
                   "the packages), and root")


@pytest.fixture(scope="module")
def wheels():
    needs_tools(run_kernels.HOST_ARCH)
    given = os.environ.get("HTTPTRACE_WHEEL", "").split()
    return run_kernels.wheels_by_arch(given) if given else run_kernels.build_wheels()


def test_unit_tests_pass_on_debian_11s_python_3_9(wheels):
    """Python 3.9 is the oldest httptrace supports: the unit tests run with Debian 11's own python3."""
    done = run_kernels.run_unit_tests("bullseye")
    summary = done.stdout.strip().splitlines()[-1:] or [""]
    assert done.returncode == 0, f"{' '.join(done.args[-4:])} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
    assert " passed" in summary[0] and "failed" not in summary[0], summary
    print(f"Debian 11's Python: {summary[0]}")


@pytest.mark.parametrize("guest", GUESTS, ids=[f"{g.suite}-{g.kernel}" for g in GUESTS])
def test_wheel_in_guest(guest, wheels):
    needs_tools(guest.spec)
    if guest.arch not in wheels:
        cannot_run(f"no {guest.spec.uname} wheel among {sorted(wheels.values())}: make wheel builds one per arch")
    outcome = run_kernels.run_guest(guest, wheels[guest.arch])
    where = os.path.relpath(outcome.artifacts, run_kernels.ROOT)
    if not outcome.ok:  # pytest.fail: the message alone, not the Outcome's repr
        pytest.fail(f"{guest.suite} {outcome.package or guest.kernel} ({outcome.release or 'not booted'}; "
                    f"{outcome.prepare_seconds:.0f}s on the host, {outcome.seconds:.0f}s in the guest): "
                    f"{outcome.problem}\nartifacts: {where}", pytrace=False)
    checks = outcome.result["checks"]
    assert checks and all(c["ok"] for c in checks)
    assert outcome.result["family"] == guest.family, f"programs: {outcome.result['family']}, want {guest.family}"
    print(f"{guest.suite} {guest.arch} {outcome.package} ({outcome.release}): {len(checks)} guest checks passed, "
          f"family {guest.family}; {outcome.prepare_seconds:.0f}s on the host, {outcome.seconds:.0f}s in the guest")
