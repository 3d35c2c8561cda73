"""The wheel on other kernels: each kernel of kernels.txt boots under QEMU and runs guest_check.py.

One test per kernel; it fails (never skips) when the guest does not boot, hangs, or any guest check fails,
naming the artifacts directory (console.log, result.json, verifier.log, dmesg.log). Without QEMU it skips,
except under CI=true, where a missing QEMU is a failure: `make test` installs it.
The wheel is built once (`make wheel`) unless HTTPTRACE_WHEEL names one.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from . import run_kernels

KERNELS = run_kernels.read_kernel_list()


@pytest.fixture(scope="module")
def wheel():
    missing = [tool for tool, ok in ((run_kernels.QEMU, shutil.which(run_kernels.QEMU)),
                                     (run_kernels.BUSYBOX, os.path.exists(run_kernels.BUSYBOX))) if not ok]
    if missing:
        message = (f"{', '.join(missing)} missing: the kernel tests need qemu-system-x86 and busybox-static "
                   "(make test-kernels installs them)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    given = os.environ.get("HTTPTRACE_WHEEL")
    return given if given else run_kernels.build_wheel()


@pytest.mark.parametrize("entry", KERNELS)
def test_wheel_on_kernel(entry, wheel):
    outcome = run_kernels.run_kernel(entry, wheel)
    where = os.path.relpath(outcome.artifacts, run_kernels.ROOT)
    assert outcome.ok, f"{outcome.package} ({outcome.release or 'not booted'}): {outcome.problem}\nartifacts: {where}"
    checks = outcome.result["checks"]
    assert checks and all(c["ok"] for c in checks)
    with open(os.path.join(outcome.artifacts, "features.json")) as f:
        features = json.load(f)["features"]
    print(f"{outcome.package} ({outcome.release}): {len(checks)} guest checks passed in {outcome.seconds:.0f}s; "
          f"features: {', '.join(name for name, ok in features.items() if ok)}")
