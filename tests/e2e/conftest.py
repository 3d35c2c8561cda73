"""End-to-end fixtures: real BPF programs, real servers and clients in child processes.

The tracer never traces its own process, so every server and client here runs in a subprocess.
These tests need root (CAP_BPF + CAP_PERFMON). Outside CI they skip without it; under CI=true a missing
privilege is a failure, never a skip.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

import pytest

from httptrace import events
from httptrace.checks import check_privileges

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_runtest_setup(item):
    """No privileges: skip on a developer's machine, fail loudly under CI=true (CI must run these)."""
    privileges = check_privileges()
    if privileges.ok:
        return
    reason = f"e2e tests load BPF programs and need root: {privileges.detail}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


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


class ThreadedCapture:
    """Runs one of a Tracer's iterators in a thread for the duration of a `with` block.

    On exit: `stats` (tracer + reassembler counters) and `drops` (ring-buffer losses by event type);
    an error inside the iterator is raised there."""

    join_timeout = 10.0

    def __init__(self, settle: float = 0.3, **tracer_kwargs):
        from httptrace.tracer import Tracer

        self.tracer = Tracer(**tracer_kwargs)
        self.settle = settle
        self.error: BaseException | None = None
        self.stats: dict = {}
        self.drops: dict = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _iterate(self):
        raise NotImplementedError

    def _collect(self, item) -> None:
        raise NotImplementedError

    def _run(self):
        try:
            for item in self._iterate():
                self._collect(item)
        except BaseException as exc:  # surfaced in __exit__
            self.error = exc

    def __enter__(self):
        self.tracer.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(self.settle)
        self.tracer.stop()
        self._thread.join(self.join_timeout)
        alive = self._thread.is_alive()
        if not alive:
            self.stats = self.tracer.stats()
        self.drops = self.tracer.drops()
        self.tracer.__exit__(*exc)
        if self.error:
            raise self.error
        assert not alive, f"the tracer's iterator did not end within {self.join_timeout} s of stop()"


class EventCapture(ThreadedCapture):
    """The raw connection and payload events (Tracer.events())."""

    def __init__(self, **tracer_kwargs):
        super().__init__(settle=0.2, **tracer_kwargs)
        self.events: list = []

    def _iterate(self):
        return self.tracer.events()

    def _collect(self, item) -> None:
        self.events.append(item)

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


# A TCP server that echoes what it reads: not HTTP, for tests of what the kernel does not classify.
ECHO_SERVER = """
import socket, sys
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    c, _ = s.accept()
    with c:
        while data := c.recv(65536):
            c.sendall(data)
"""


@contextlib.contextmanager
def serving(cmd: list[str], port: int, host: str = "127.0.0.1", **popen_kwargs):
    """A server process, yielded once it accepts connections on host:port; killed afterwards."""
    proc = subprocess.Popen(cmd, **popen_kwargs)
    try:
        wait_for_port(port, host)
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def python_server(tmp_path):
    """A ThreadingHTTPServer (python -m http.server) serving tmp_path/www on IPv4 and IPv6."""
    root = tmp_path / "www"
    root.mkdir()
    port = free_port(socket.AF_INET6)
    with serving([sys.executable, "-m", "http.server", "--bind", "::", "--directory", str(root), str(port)],
                 port, "::1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        yield proc, port, root


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


# ---- exchange-level helpers (the seed scenario and the real-world matrix) -----------------------------


def require_tool(name: str) -> str:
    """The path of a program the tests need; missing is a failure, never a skip."""
    path = shutil.which(name)
    assert path, f"{name} is missing: make test installs it"
    return path


class ExchangeCapture(ThreadedCapture):
    """Runs Tracer.exchanges() in a thread for the duration of a `with` block.

    `exchanges` fills up while the block runs (each with its arrival time in `arrived`, monotonic
    seconds), so a test can wait for an exchange while the connection that carries it is still open.
    On exit: `stats` (tracer + reassembler counters) and `drops` (ring-buffer losses by event type).
    """

    join_timeout = 120.0  # under load the reassembler may still be catching up on the ring buffer

    def __init__(self, settle: float = 0.3, **tracer_kwargs):
        super().__init__(settle=settle, **tracer_kwargs)
        self.exchanges: list = []
        self.arrived: list[float] = []

    def _iterate(self):
        return self.tracer.exchanges()

    def _collect(self, item) -> None:
        self.exchanges.append(item)
        self.arrived.append(time.monotonic())

    def select(self, *, pid: int | None = None, role=None, comm: str | None = None,
               target: str | None = None, port: int | None = None) -> list:
        """The exchanges so far (in arrival order) that match every criterion given.

        `port`: one end of the connection is PORT on a loopback address. The tracer's port filter matches
        a local OR remote port, so on a busy machine an unrelated connection whose ephemeral port
        happens to equal the test server's port is captured too: counts of "everything" use this."""
        return [ex for ex in list(self.exchanges)
                if (port is None or on_loopback_port(ex.connection, port))
                and (pid is None or ex.connection.pid == pid)
                and (role is None or ex.connection.role == role)
                and (comm is None or ex.connection.comm == comm)
                and (target is None or ex.request.target == target)]

    def wait_for(self, count: int = 1, timeout: float = 20.0, **criteria) -> list:
        """Wait until at least `count` exchanges match `select(**criteria)`; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.select(**criteria)
            if len(found) >= count or self.error or not self._thread.is_alive():
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        assert len(found) >= count, (
            f"waited {timeout}s for {count} exchange(s) matching {criteria}, got {len(found)}; "
            f"all: {[(ex.connection.pid, ex.connection.role.value, ex.request.target) for ex in self.exchanges]}")
        return found


LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})


def on_loopback_port(connection, port: int) -> bool:
    return any(end is not None and end.ip in LOOPBACK and end.port == port
               for end in (connection.local, connection.remote))


@pytest.fixture
def exchange_capture():
    return ExchangeCapture


@pytest.fixture
def spawn():
    """subprocess.Popen for a test's clients; whatever still runs at teardown (a failed test) is killed."""
    started = []

    def start(*args, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(*args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def go_build(src_dir: str, out: str, tmp) -> str:
    """`go build` without relying on HOME (GOPATH in tmp; the build cache in build/gocache)."""
    go = require_tool("go")
    # The build cache lives in the (git-ignored) build/ directory so that later runs are fast.
    cache = os.path.join(os.path.dirname(os.path.dirname(HERE)), "build", "gocache")
    env = dict(os.environ, GOCACHE=cache, GOPATH=str(tmp / "gopath"), GOFLAGS="", CGO_ENABLED="0")
    done = subprocess.run([go, "build", "-o", out, "."], cwd=src_dir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"go build in {src_dir} failed:\n{done.stderr}"
    return out


@pytest.fixture(scope="session")
def go_programs(tmp_path_factory):
    """{'server': path of the seed server, 'client': path of the Go client}, built once per session."""
    tmp = tmp_path_factory.mktemp("go")
    servers = os.path.join(HERE, "servers")
    return {"server": go_build(os.path.join(servers, "seed"), str(tmp / "seed-server"), tmp),
            "client": go_build(os.path.join(servers, "seedclient"), str(tmp / "seed-client"), tmp)}


@pytest.fixture
def seed_server(go_programs):
    """(process, port) of the Go seed server on a free loopback port."""
    port = free_port()
    with serving([go_programs["server"], "-addr", f"127.0.0.1:{port}"], port) as proc:
        yield proc, port


@pytest.fixture
def node_server():
    """(process, port) of tests/e2e/servers/node_server.js."""
    node = require_tool("node")
    port = free_port()
    with serving([node, os.path.join(HERE, "servers", "node_server.js"), str(port)], port,
                 stdout=subprocess.DEVNULL) as proc:
        yield proc, port


def parse_head_block(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(start line, [(name, value)]) of one header block as written by `curl -D` or shown by `curl -v`."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return lines[0], headers


def curl_response_head(path) -> tuple[str, int, list[tuple[str, str]]]:
    """(version, status, headers) of the last response in a `curl -D FILE` file."""
    text = open(path, "rb").read().decode("latin-1")
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    start, headers = parse_head_block(blocks[-1])
    version, status = start.split(" ")[:2]
    return version, int(status), headers


def curl_request_heads(stderr: bytes) -> list[tuple[str, list[tuple[str, str]]]]:
    """The request heads curl -v sent: [(request line, [(name, value)])] from its '> ' lines."""
    heads, current = [], []
    for line in stderr.decode("latin-1").splitlines():
        line = line.rstrip("\r")
        if line.rstrip(" ") == ">":  # the blank line that ends a request head
            if current:
                heads.append(parse_head_block("\n".join(current)))
            current = []
        elif line.startswith("> "):
            current.append(line[2:])
    if current:
        heads.append(parse_head_block("\n".join(current)))
    return heads


class CurlTransfer:
    """One request curl made and the response it got, as curl itself reported them."""

    def __init__(self, request_line, sent_headers, request_body, head_file, body_file, local_port):
        self.method, self.target, _ = request_line.split(" ", 2)
        self.sent_headers = sent_headers            # [(name, value)] from `curl -v`
        self.request_body = request_body            # bytes curl was told to send
        self.version, self.status, self.headers = curl_response_head(head_file)   # from `curl -D`
        self.body = open(body_file, "rb").read()    # from `curl -o`
        self.local_port = local_port                # from `curl -w %{local_port}`


def run_curl(tmp_path, *transfers: dict, extra=(), timeout: float = 120) -> tuple[int, list[CurlTransfer]]:
    """Run ONE curl process making `transfers` in order (joined with --next, so they share a keep-alive
    connection when the server allows it). Each transfer is {"url": str, "data": bytes | None,
    "headers": [str], "args": [str]}. Returns (curl's pid, [CurlTransfer])."""
    require_tool("curl")
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="curl", dir=tmp_path))
    cmd = ["curl"]
    files = []
    for i, t in enumerate(transfers):
        if i:
            cmd.append("--next")
        head, body = tmp_path / f"curl{i}.head", tmp_path / f"curl{i}.body"
        cmd += ["-sS", "-v", "-g", "--max-time", "60", "-D", str(head), "-o", str(body), "-w", "%{local_port}\\n",
                *extra, *t.get("args", ())]
        for header in t.get("headers", ()):
            cmd += ["-H", header]
        data = t.get("data")
        if data is not None:
            (tmp_path / f"curl{i}.data").write_bytes(data)
            cmd += ["--data-binary", f"@{tmp_path / f'curl{i}.data'}"]
        cmd.append(t["url"])
        files.append((head, body, data))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, f"curl failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}"
    heads = curl_request_heads(err)
    ports = [int(p) for p in out.split()]
    assert len(heads) == len(ports) == len(transfers), (heads, ports)
    return proc.pid, [CurlTransfer(line, headers, data or b"", head, body, port)
                      for (line, headers), (head, body, data), port in zip(heads, files, ports)]


def assert_exchange_matches(ex, t: CurlTransfer, *, flags=frozenset(), response_body_visible: bool = True):
    """The exchange carries exactly what curl sent and received."""
    request, response = ex.request, ex.response
    assert (request.method, request.target) == (t.method, t.target), ex
    assert list(request.headers) == t.sent_headers, (request.headers, t.sent_headers)
    assert request.body == t.request_body and request.body_size == len(t.request_body), request.body[:200]
    assert response is not None, f"no response for {t.method} {t.target}: flags {ex.flags}"
    assert (response.version, response.status) == (t.version, t.status)
    assert list(response.headers) == t.headers, (response.headers, t.headers)
    assert response.body_size == len(t.body), (response.body_size, len(t.body))
    if response_body_visible:
        assert response.body == t.body, f"body differs: {len(response.body)} vs {len(t.body)} bytes"
        assert not response.truncated
    assert ex.flags == frozenset(flags), ex.flags
