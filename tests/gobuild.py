"""Builds tests/e2e/servers/gotls (Go's stdlib only) in the four ways Go programs ship, for the Go TLS
tests. Debian's golang-go (`make test` installs it), offline (GOPROXY=off), into a temporary directory:
the binaries are never committed. The build cache is build/gocache, so later runs only link."""
from __future__ import annotations

import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "e2e", "servers", "gotls")

# name -> (cgo, go build flags)
VARIANTS = {
    "default": (False, []),
    "stripped": (False, ["-ldflags=-s -w"]),
    "pie": (False, ["-buildmode=pie"]),
    # The Debian / containerd way: cgo, external linker, stripped: no pclntab section of its own, and
    # .text starts before runtime.text.
    "extpie": (True, ["-buildmode=pie", "-ldflags=-s -w -linkmode=external"]),
}
# Only for cross-checks: the external-linked PIE with its symbols kept.
EXTPIE_SYMBOLS = ("extpie-symbols", (True, ["-buildmode=pie", "-ldflags=-linkmode=external"]))


def go_tool(may_skip: bool = False) -> str:
    """The go command; missing, a failure (`make test` installs golang-go). With `may_skip` (the unit
    tests, which also run in tests/kernels' Debian 11 chroot, without Go), a skip unless CI=true."""
    go = shutil.which("go") or "/usr/lib/go/bin/go"
    if not os.path.exists(go):
        import pytest

        if may_skip and os.environ.get("CI") != "true":
            pytest.skip("no Go toolchain here (make test installs golang-go)")
        pytest.fail("go is missing: make test installs golang-go")
    return go


def go_env(tmp: str, cgo: bool) -> dict:
    return dict(os.environ, GOCACHE=os.path.join(ROOT, "build", "gocache"), GOPATH=os.path.join(tmp, "gopath"),
                GOPROXY="off", GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="1" if cgo else "0")


def build(tmp: str, name: str, cgo: bool, flags: list[str], may_skip: bool = False, goarch: str = "") -> str:
    out = os.path.join(tmp, f"gotls-{goarch + '-' if goarch else ''}{name}")
    env = dict(go_env(tmp, cgo), **({"GOARCH": goarch} if goarch else {}))
    done = subprocess.run([go_tool(may_skip), "build", *flags, "-o", out, "."], cwd=SOURCE, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"go build {' '.join(flags)} failed:\n{done.stderr}"
    return out


def build_all(tmp: str, extra: tuple = (), may_skip: bool = False) -> dict[str, str]:
    """{variant: path} for VARIANTS (and the `extra` (name, (cgo, flags)) pairs)."""
    return {name: build(tmp, name, cgo, flags, may_skip) for name, (cgo, flags) in (*VARIANTS.items(), *extra)}


def build_arm64(tmp: str, may_skip: bool = False) -> dict[str, str]:
    """The variants Go cross-builds for arm64 without a C toolchain (not extpie: cgo and an arm64 linker)."""
    return {name: build(tmp, name, cgo, flags, may_skip, goarch="arm64")
            for name, (cgo, flags) in VARIANTS.items() if not cgo}


def go_version() -> str:
    """The toolchain's version, as its binaries record it: "go1.19.8"."""
    return subprocess.run([go_tool(), "env", "GOVERSION"], capture_output=True, text=True, check=True,
                          env=dict(os.environ, GOFLAGS="")).stdout.strip()


# The bodies the Go program sends (tests/e2e/servers/gotls/main.go), for byte-exact comparisons.
def post_body(i: int, size: int) -> bytes:
    head = f"post {i}:".encode()
    return (head + bytes(ord("a") + n % 26 for n in range(len(head), size)))[:size]


def big_body() -> bytes:
    import hashlib
    import struct

    return b"".join(hashlib.sha256(struct.pack("<Q", i)).digest() for i in range(32768))
