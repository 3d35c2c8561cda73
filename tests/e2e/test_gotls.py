"""Go's crypto/tls, end to end: a Go HTTPS server and client (stdlib only, HTTP/1.1) in the four builds
Go programs ship as, captured byte for byte from both sides by the uprobes of httptrace/gotls.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from httptrace.exchange import Flag, Role

from ..gobuild import VARIANTS, big_body, build_all, post_body
from .conftest import ExchangeCapture, free_port

POSTS, POST_SIZE = 5, 20000   # a body over one TLS record (16 KiB): it arrives in several Reads


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return build_all(str(tmp_path_factory.mktemp("gotls")))


@pytest.fixture(params=sorted(VARIANTS))
def variant(request, builds):
    return request.param, builds[request.param]


H2 = dict(os.environ, GOTLS_H2="1")   # both sides of servers/gotls speak HTTP/2 (ALPN h2)


class GoServer:
    def __init__(self, binary: str, env: dict | None = None):
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([binary, "serve", f"127.0.0.1:{self.port}"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env)
        assert self.proc.stdout.readline() == b"listening\n"

    def stop(self) -> None:
        alive = self.proc.poll() is None
        self.proc.kill()
        self.proc.wait()
        assert alive, f"the traced Go server died: exit status {self.proc.returncode}"


@pytest.fixture
def go_server(variant):
    server = GoServer(variant[1])
    yield server
    server.stop()


def wait_probed(cap, binary: str) -> None:
    """Until the tracer has probed `binary`: at start, or at a later re-scan (a start-up scan on a busy
    host may spend its time budget on other programs first)."""
    from httptrace.tracer import TLS_RESCAN_EVERY_S

    # (8 re-scans: on a host busy starting programs, measured here, 4 were not always enough)
    deadline = time.monotonic() + 8 * TLS_RESCAN_EVERY_S + 5
    while binary not in [p.path for p in cap.tracer.go_programs] and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = [p for p in cap.tracer.go_programs if p.path == binary]
    assert len(seen) == 1 and seen[0].probed, cap.tracer.go_programs


def run_client(binary: str, *args: object, timeout: float = 120, env: dict | None = None) -> None:
    done = subprocess.run([binary, *map(str, args)], capture_output=True, timeout=timeout, env=env)
    assert done.returncode == 0 and done.stdout.endswith(b"ok\n"), done.stderr.decode(errors="replace")


def assert_posts_and_big(exchanges, role: Role, posts: int = POSTS, size: int = POST_SIZE,
                         version: str = "HTTP/1.1") -> None:
    """The `posts` client's requests and the responses, exactly as sent and in order."""
    mine = [ex for ex in exchanges if ex.connection.role == role]
    assert {(ex.request.version, ex.response.version) for ex in mine} == {(version, version)}
    assert [(ex.request.method, ex.request.target) for ex in mine] == [("POST", "/echo")] * posts + [("GET", "/big")]
    assert len({ex.connection.fd for ex in mine}) == 1   # one keep-alive connection
    for i, ex in enumerate(mine[:-1]):
        assert ex.request.body == post_body(i, size), i
        assert ex.response.status == 200 and ex.response.body == post_body(i, size), i
    big = mine[-1].response
    assert big.status == 200 and big.body_size == len(big.body) == 1 << 20 and big.body == big_body()
    for ex in mine:
        assert ex.connection.tls and not ex.flags, (ex.flags, ex.connection)


def assert_clean(cap) -> None:
    stats = cap.stats
    assert stats["drops"] == stats["parse_errors"] == stats["gaps"] == 0, stats
    assert stats["go_tls_bad_fd"] == stats["go_tls_unknown_binary"] == 0, stats


def test_keepalive_posts_and_a_big_response_from_both_sides(variant, go_server):
    """The server was running when the tracer started; the client starts under it."""
    name, binary = variant
    with ExchangeCapture(ports=[go_server.port]) as cap:
        wait_probed(cap, binary)
        run_client(binary, "posts", go_server.base, POSTS, POST_SIZE)
        cap.wait_for(2 * (POSTS + 1), port=go_server.port)
    assert_posts_and_big(cap.exchanges, Role.SERVER)
    assert_posts_and_big(cap.exchanges, Role.CLIENT)
    # Ciphertext never comes out as an exchange of its own: these are all there is.
    assert len(cap.exchanges) == 2 * (POSTS + 1)
    assert {ex.connection.pid for ex in cap.exchanges if ex.connection.role == Role.SERVER} == {go_server.proc.pid}
    assert_clean(cap)


def test_a_go_program_started_after_the_tracer(variant, tmp_path):
    """Found by the periodic re-scan; its own file (a fresh inode) was not running at start."""
    binary = str(tmp_path / f"late-{variant[0]}")
    shutil.copy2(variant[1], binary)
    with ExchangeCapture() as cap:
        server = GoServer(binary)
        try:
            assert binary not in [p.path for p in cap.tracer.go_programs]
            wait_probed(cap, binary)
            run_client(binary, "posts", server.base, 2, 300)
            cap.wait_for(2 * 3, port=server.port)
        finally:
            server.stop()
    mine = [ex for ex in cap.select(port=server.port)]
    assert_posts_and_big(mine, Role.SERVER, posts=2, size=300)
    assert_posts_and_big(mine, Role.CLIENT, posts=2, size=300)


def test_attached_while_a_go_tls_connection_is_open(variant, go_server):
    """The connection's first exchange happened before the tracer: the later ones are captured and
    marked mid_stream, on both sides."""
    binary = variant[1]
    client = subprocess.Popen([binary, "hold", go_server.base], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        client.stdin.write(b"0\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"ok 0\n"
        with ExchangeCapture(ports=[go_server.port]) as cap:
            wait_probed(cap, binary)
            for i in (1, 2):
                client.stdin.write(b"%d\n" % i)
                client.stdin.flush()
                assert client.stdout.readline() == b"ok %d\n" % i
            cap.wait_for(4, port=go_server.port)
    finally:
        client.stdin.close()
        assert client.wait(30) == 0
    assert len(cap.exchanges) == 4
    for pid, role in ((go_server.proc.pid, Role.SERVER), (client.pid, Role.CLIENT)):
        mine = [ex for ex in cap.exchanges if ex.connection.pid == pid]
        assert [ex.request.body for ex in mine] == [post_body(1, 100), post_body(2, 100)], pid
        for ex in mine:   # no accept() or connect() seen: the role is told by the traffic
            assert ex.connection.tls and ex.connection.role == role
            assert ex.flags == frozenset({Flag.MID_STREAM}), ex.flags
            assert ex.response.status == 200 and ex.response.body == ex.request.body
    assert_clean(cap)


def test_ten_thousand_requests_under_the_probes(variant, go_server):
    """The traced server keeps serving correctly (the client checks every response) and every request
    is captured once."""
    requests = 10_000
    with ExchangeCapture(ports=[go_server.port], pids=[go_server.proc.pid]) as cap:
        wait_probed(cap, variant[1])
        run_client(variant[1], "load", go_server.base, requests, 8, timeout=300)
        cap.wait_for(requests, timeout=120, port=go_server.port)
    assert go_server.proc.poll() is None
    assert len(cap.exchanges) == requests
    for ex in cap.exchanges:
        assert (ex.request.target, ex.response.status, ex.response.body) == ("/hello", 200, b"hello from go over tls\n")
        assert ex.connection.role == Role.SERVER and ex.connection.tls and not ex.flags
    assert_clean(cap)


def test_http2_from_both_sides(variant):
    """Go's default over TLS, HTTP/2 (ALPN h2), through the same probes: the kernel classifies the
    preface, user space reads the frames. The same keep-alive POSTs and 1 MiB, then 2,000 GETs as
    concurrent streams on one connection, each captured once."""
    name, binary = variant
    server = GoServer(binary, env=H2)
    try:
        with ExchangeCapture(ports=[server.port]) as cap:
            wait_probed(cap, binary)
            run_client(binary, "posts", server.base, POSTS, POST_SIZE, env=H2)
            cap.wait_for(2 * (POSTS + 1), port=server.port)
            run_client(binary, "load", server.base, 2000, 8, env=H2)
            cap.wait_for(2 * (POSTS + 1 + 2000), timeout=60, port=server.port)
    finally:
        server.stop()
    posts = [ex for ex in cap.exchanges if ex.request.target != "/hello"]
    assert_posts_and_big(posts, Role.SERVER, version="HTTP/2")
    assert_posts_and_big(posts, Role.CLIENT, version="HTTP/2")
    hellos = [ex for ex in cap.exchanges if ex.request.target == "/hello"]
    for role in (Role.SERVER, Role.CLIENT):
        mine = [ex for ex in hellos if ex.connection.role == role]
        assert len(mine) == 2000 and len({ex.connection.fd for ex in mine}) == 1, role
        assert all(ex.response.status == 200 and ex.response.body == b"hello from go over tls\n" and not ex.flags
                   for ex in mine)
    assert_clean(cap)


def test_no_tls_leaves_go_programs_alone(builds):
    server = GoServer(builds["default"])
    try:
        with ExchangeCapture(ports=[server.port], tls=False) as cap:
            run_client(builds["default"], "posts", server.base, 1, 100)
    finally:
        server.stop()
    assert cap.tracer.go_programs == [] and cap.exchanges == []


def test_port_filter_holds_for_go_plaintext(builds):
    server = GoServer(builds["stripped"])
    try:
        with ExchangeCapture(ports=[free_port()]) as cap:
            wait_probed(cap, builds["stripped"])
            run_client(builds["stripped"], "posts", server.base, 1, 100)
    finally:
        server.stop()
    assert cap.exchanges == [] and cap.stats["events"] == 0


def test_check_lists_go_programs_probed_and_not(builds, tmp_path):
    """`--check`: a Go HTTPS server is probed; a Go program without crypto/tls is listed with the reason."""
    import sys

    from ..gobuild import go_env, go_tool

    (tmp_path / "main.go").write_text('package main\n\nimport "time"\n\nfunc main() { time.Sleep(time.Hour) }\n')
    (tmp_path / "go.mod").write_text("module sleeper\n\ngo 1.19\n")
    sleeper = str(tmp_path / "sleeper")
    subprocess.run([go_tool(), "build", "-o", sleeper, "."], cwd=tmp_path, env=go_env(str(tmp_path), False),
                   check=True, capture_output=True)
    server = GoServer(builds["extpie"])
    idle = subprocess.Popen([sleeper])
    try:
        out = subprocess.run([sys.executable, "-m", "httptrace", "--check"], capture_output=True, text=True,
                             timeout=120).stdout
    finally:
        idle.kill()
        idle.wait()
        server.stop()
    (line,) = [line for line in out.splitlines() if line.startswith("ok   go tls: ")]
    probed, _, not_probed = line.partition("; not probed: ")
    assert f"{builds['extpie']} (go1." in probed and "Write (" in probed and "Read (" in probed, line
    assert f"{sleeper} (go1." in not_probed and "no crypto/tls" in not_probed, line
