"""End-to-end fixtures: real BPF programs, real servers and clients in child processes.

The tracer never traces its own process, so every server and client here runs in a subprocess.
These tests need root (CAP_BPF + CAP_PERFMON). Outside CI they skip without it; under CI=true a missing
privilege is a failure, never a skip.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

from httptrace import events
from httptrace.checks import check_privileges

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    if check_privileges().ok:
        return
    reason = f"e2e tests load BPF programs and need root: {check_privileges().detail}"
    for item in items:
        if "/e2e/" in str(item.fspath):
            if os.environ.get("CI") == "true":
                item.add_marker(pytest.mark.usefixtures("fail_without_root"))
            else:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def fail_without_root():
    pytest.fail("CI=true but not root: the e2e tests must run, not skip")


def free_port(family=socket.AF_INET) -> int:
    with socket.socket(family) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while time.monotonic() < deadline:
        with socket.socket(family) as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


class EventCapture:
    """Runs a Tracer's raw event iterator in a thread for the duration of a `with` block."""

    def __init__(self, **tracer_kwargs):
        from httptrace.tracer import Tracer

        self.tracer = Tracer(**tracer_kwargs)
        self.events: list = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self):
        try:
            for ev in self.tracer.events():
                self.events.append(ev)
        except BaseException as exc:  # surfaced in __exit__
            self.error = exc

    def __enter__(self):
        self.tracer.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.tracer.stop()
        self._thread.join(10)
        self.drops = self.tracer.drops()
        self.tracer.__exit__(*exc)
        if self.error:
            raise self.error

    def of_type(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def streams(self):
        """(conn, direction) -> (bytes, gaps); asserts chunks arrive in pos order."""
        data, gaps, expected = defaultdict(bytearray), defaultdict(int), {}
        for ev in self.of_type(events.Data):
            key = (ev.conn, ev.direction)
            at = expected.get(key, 0)
            if ev.pos > at:
                gaps[key] += ev.pos - at
            assert ev.pos >= at, f"event went backwards on {key}"
            data[key] += ev.payload
            expected[key] = ev.pos + len(ev.payload) + ev.not_copied
        return {k: bytes(v) for k, v in data.items()}, gaps

    def stream(self, pid: int, direction):
        """The one connection's stream of `pid` in `direction` (asserting there is exactly one)."""
        streams, _ = self.streams()
        found = [data for (conn, d), data in streams.items() if conn[0] == pid and d == direction]
        assert len(found) == 1, f"expected one connection of pid {pid} {direction!r}, found {len(found)}"
        return found[0]


@pytest.fixture
def capture():
    return EventCapture


@pytest.fixture
def python_server(tmp_path):
    """A ThreadingHTTPServer (python -m http.server) serving tmp_path/www on IPv4 and IPv6."""
    root = tmp_path / "www"
    root.mkdir()
    port = free_port(socket.AF_INET6)
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "::", "--directory", str(root),
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, "::1")
        yield proc, port, root
    finally:
        proc.kill()
        proc.wait()


def start_nginx(workdir, port: int, template: str = "nginx.conf.template") -> subprocess.Popen:
    """nginx with tests/e2e/servers/<template>; static files under workdir/www."""
    import string

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx), "nginx is missing: make test installs it"
    for sub in ("www", "tmp"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    with open(os.path.join(HERE, "servers", template)) as f:
        conf = string.Template(f.read()).safe_substitute(dir=str(workdir), port=port)
    conf_path = os.path.join(workdir, "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen([nginx, "-c", conf_path, "-e", os.path.join(workdir, "error.log")])
    wait_for_port(port)
    return proc


@pytest.fixture
def nginx(tmp_path):
    """(process, port, www directory) of a running nginx."""
    port = free_port()
    proc = start_nginx(tmp_path / "nginx", port)
    try:
        yield proc, port, tmp_path / "nginx" / "www"
    finally:
        proc.terminate()
        proc.wait(10)


def curl(*args: str) -> subprocess.CompletedProcess:
    assert shutil.which("curl"), "curl is missing: make test installs it"
    return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, check=True)
