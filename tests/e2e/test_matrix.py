"""The real-world matrix: real servers x real clients, each cell comparing what httptrace captured
with what the client itself saw (request line, headers, status, body bytes). See docs/e2e.md.
"""
from __future__ import annotations

import base64
import collections
import json
import os
import re
import subprocess
import sys
import time

import pytest

from httptrace.exchange import Endpoint, Flag, Role

from .conftest import HERE, assert_exchange_matches, free_port, require_tool, run_curl, serving

ROOT = os.path.dirname(os.path.dirname(HERE))
KEEPALIVE_CLIENT = os.path.join(HERE, "keepalive_client.py")
RAW_CLIENT = os.path.join(HERE, "raw_client.py")


def connections_of(exchanges) -> set:
    return {(ex.connection.pid, ex.connection.fd, ex.connection.tsid) for ex in exchanges}


def only(exchanges, what=""):
    assert len(exchanges) == 1, f"expected one exchange {what}, got {len(exchanges)}: {exchanges}"
    return exchanges[0]


def keepalive_client(spawn, host, port, specs, tmp_path, *, wait_stdin=False) -> subprocess.Popen:
    (tmp_path / "spec.json").write_text(json.dumps(specs))
    return spawn([sys.executable, KEEPALIVE_CLIENT, host, str(port), str(tmp_path / "spec.json"),
                  str(tmp_path / "out.json"), *(["--wait-stdin"] if wait_stdin else [])],
                 stdin=subprocess.PIPE if wait_stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


def assert_matches_http_client(ex, spec, got) -> None:
    """The exchange carries what keepalive_client.py sent (spec) and received (got)."""
    assert (ex.request.method, ex.request.target) == (spec["method"], spec["target"])
    assert ex.request.body == (spec.get("body") or "").encode("latin-1")
    for name, value in (spec.get("headers") or {}).items():
        assert ex.request.header(name) == value, name
    assert ex.request.header("Accept-Encoding") == "identity"  # http.client's own header
    assert ex.response is not None, ex
    assert (ex.response.status, ex.response.reason) == (got["status"], got["reason"])
    assert [list(h) for h in ex.response.headers] == got["headers"]
    assert ex.response.body == base64.b64decode(got["body"])


# ---- nginx: `return`, writev, sendfile, keep-alive, pipelining, wrk --------------------------------------


def test_nginx_with_curl_return_copied_and_sendfile(exchange_capture, nginx, tmp_path):
    _, port, www = nginx
    data = os.urandom(300_000)
    (www / "file.bin").write_bytes(data)
    url = f"http://127.0.0.1:{port}"
    with exchange_capture(ports=[port]) as cap:
        curl_pid, done = run_curl(tmp_path, {"url": f"{url}/hello"},
                                  {"url": f"{url}/echo?x=1", "headers": ["X-Test: 1"]},
                                  {"url": f"{url}/copied/file.bin"}, {"url": f"{url}/static/file.bin"},
                                  {"url": f"{url}/nothing-here"})
        cap.wait_for(5, pid=curl_pid)
        cap.wait_for(5, comm="nginx", role=Role.SERVER, port=port)
    assert [t.status for t in done] == [200, 200, 200, 200, 404]
    assert done[2].body == done[3].body == data and done[0].body == b"hello from nginx\n"
    assert len({t.local_port for t in done}) == 1, "curl did not keep its connection"
    client = cap.select(pid=curl_pid)
    server = cap.select(comm="nginx", role=Role.SERVER, port=port)
    assert len(client) == len(server) == 5 and len(cap.select(port=port)) == 10
    assert len(connections_of(client)) == len(connections_of(server)) == 1
    for ex, t in zip(client, done):
        assert ex.connection.role == Role.CLIENT
        assert_exchange_matches(ex, t)  # the client read every body, sendfile or not
    for ex, t in zip(server, done):
        if t.target == "/static/file.bin":
            # sendfile(): the bytes went from the page cache to the socket; the size is all we know
            assert_exchange_matches(ex, t, flags={Flag.NOT_VISIBLE}, response_body_visible=False)
            assert len(ex.response.body) < len(data) and ex.response.truncated
        else:
            assert_exchange_matches(ex, t)


def test_nginx_pipelined_requests_are_paired_in_order(exchange_capture, nginx, tmp_path, spawn):
    """Five requests in one send(); nginx answers them in order on the same connection."""
    _, port, _ = nginx
    requests = [b"GET /echo?pipelined=%d HTTP/1.1\r\nHost: pipe\r\n%s\r\n"
                % (i, b"Connection: close\r\n" if i == 4 else b"") for i in range(5)]
    (tmp_path / "req").write_bytes(b"".join(requests))
    with exchange_capture(ports=[port]) as cap:
        client = spawn([sys.executable, RAW_CLIENT, "127.0.0.1", str(port), str(tmp_path / "req"),
                        str(tmp_path / "resp"), "send"])
        assert client.wait(30) == 0
        cap.wait_for(5, pid=client.pid)
        cap.wait_for(5, comm="nginx", role=Role.SERVER, port=port)
    received = (tmp_path / "resp").read_bytes()
    responses = split_responses(received)
    assert [status for status, _, _ in responses] == [200] * 5
    for side in (cap.select(pid=client.pid), cap.select(comm="nginx", role=Role.SERVER, port=port)):
        assert len(side) == 5 and len(connections_of(side)) == 1
        assert [ex.request.target for ex in side] == [f"/echo?pipelined={i}" for i in range(5)]
        for i, (ex, (status, headers, body)) in enumerate(zip(side, responses)):
            assert ex.response.status == status and list(ex.response.headers) == headers
            assert ex.response.body == body == b"GET /echo?pipelined=%d\n" % i  # paired with its own request
            assert not ex.flags
    # all five requests really left in one send(): they share its timestamp
    assert len({ex.request.first_byte_ns for ex in cap.select(pid=client.pid)}) == 1


def split_responses(raw: bytes) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """Content-Length framed responses, back to back: [(status, headers, body)]."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        length = int(next(v for k, v in headers if k.lower() == "content-length"))
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


def seed_spec(i: int) -> dict:
    return {"method": "POST", "target": f"/customResponse?i={i}", "body": json.dumps({"size": i % 97}),
            "headers": {"Content-Type": "application/json"}}


def nginx_spec(i: int) -> dict:
    return {"method": "GET", "target": f"/echo?i={i}", "headers": {"X-Seq": str(i)}}


@pytest.mark.parametrize("server", ["nginx", "go"])
def test_200_sequential_keepalive_requests_none_lost_or_duplicated(exchange_capture, request, tmp_path, spawn,
                                                                   server):
    if server == "nginx":
        _, port, _ = request.getfixturevalue("nginx")
        specs, server_sel = [nginx_spec(i) for i in range(200)], {"comm": "nginx", "port": port}
    else:
        proc, port = request.getfixturevalue("seed_server")
        specs, server_sel = [seed_spec(i) for i in range(200)], {"pid": proc.pid}
    with exchange_capture(ports=[port]) as cap:
        client = keepalive_client(spawn, "127.0.0.1", port, specs, tmp_path)
        client.communicate(timeout=60)
        assert client.returncode == 0
        cap.wait_for(200, pid=client.pid)
        cap.wait_for(200, role=Role.SERVER, **server_sel)
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out["responses"]) == 200 and {r["status"] for r in out["responses"]} == {200}
    expected = [s["target"] for s in specs]
    client_side = cap.select(pid=client.pid)
    server_side = cap.select(role=Role.SERVER, **server_sel)
    for side, role in ((client_side, Role.CLIENT), (server_side, Role.SERVER)):
        counts = collections.Counter(ex.request.target for ex in side)
        assert set(counts) == set(expected), f"lost: {set(expected) - set(counts)}"
        assert max(counts.values()) == 1, f"duplicated: {[t for t, n in counts.items() if n > 1]}"
        assert [ex.request.target for ex in side] == expected  # and in order
        assert len(connections_of(side)) == 1 and {ex.connection.role for ex in side} == {role}
        for ex, spec, got in zip(side, specs, out["responses"]):
            assert not ex.flags, (ex.request.target, ex.flags)
            assert_matches_http_client(ex, spec, got)
    mine = {id(ex) for ex in client_side + server_side}
    others = [ex for ex in cap.select(port=port) if id(ex) not in mine]
    assert not others, [(ex.connection, ex.request.method, ex.request.target, ex.flags) for ex in others]
    assert only(list(connections_of(client_side)))[0] == client.pid


@pytest.mark.parametrize("ring", [None, 1 << 20], ids=["default-ring", "1MiB-ring"])
def test_wrk_bounded_load_every_capture_is_well_formed(exchange_capture, nginx, ring):
    """wrk saturates the machine (and the 1 MiB ring buffer overflows): skipped exchanges and drops are
    allowed, but every exchange that comes out must be right - a response paired with the request it
    answers (each wrk request has its own target, and nginx's /echo answers it) - and captured +
    skipped + dropped must account for what wrk did."""
    _, port, _ = nginx
    wrk = require_tool("wrk")
    with exchange_capture(ports=[port], ring_buffer_size=ring) as cap:
        run = subprocess.run([wrk, "-t1", "-c4", "-d2s", "-s", os.path.join(HERE, "servers", "wrk_echo.lua"),
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    match = re.search(r"(\d+) requests in", run.stdout)
    assert match, run.stdout
    completed = int(match.group(1))
    assert completed > 100, run.stdout
    assert "Non-2xx" not in run.stdout and "Socket errors" not in run.stdout, run.stdout
    dropped = sum(cap.drops.values())
    skipped = cap.stats["skipped_requests"]   # both sides': whole exchanges the kernel shed under overload
    for comm, role in (("wrk", Role.CLIENT), ("nginx", Role.SERVER)):
        side = cap.select(comm=comm, role=role, port=port)
        mispaired = [(ex.request.target, ex.response.body) for ex in side
                     if ex.response is not None and not ex.response.truncated
                     and ex.response.body != f"GET {ex.request.target}\n".encode()]
        assert not mispaired, (comm, len(mispaired), mispaired[:5], dropped, cap.stats)
        clean = [ex for ex in side if not ex.flags]
        for ex in clean:
            assert ex.request.method == "GET" and ex.request.target.startswith("/echo?n="), ex
            assert ex.response.status == 200 and ex.request.header("Host"), ex
        assert len({ex.request.target for ex in side}) == len(side), "an exchange came out twice"
        flagged = [ex for ex in side if ex.flags]
        # wrk stops with up to one request in flight per connection: answered or not, wrk does not count it
        in_flight = [ex for ex in flagged if ex.flags == {Flag.INCOMPLETE}]
        assert len(side) <= completed + 4 + dropped, (comm, len(side), completed, dropped)
        if dropped == 0:
            assert len(in_flight) <= 4 and flagged == in_flight, (comm, [ex.flags for ex in flagged][:10])
            assert len(clean) + skipped >= completed - 4, (comm, len(clean), completed, cap.stats)
        else:
            # each dropped event costs at most a couple of exchanges; nothing else may go missing
            assert len(clean) + skipped + 2 * dropped >= completed - 4, (comm, len(clean), completed, dropped,
                                                                     cap.stats)
            assert {flag for ex in flagged for flag in ex.flags} <= {Flag.GAP, Flag.INCOMPLETE, Flag.PARSE_ERROR}


# ---- Go net/http (the seed server) -----------------------------------------------------------------


@pytest.mark.parametrize("client", ["curl", "go"])
def test_go_server_chunked_and_large_bodies(exchange_capture, seed_server, go_programs, tmp_path, spawn, client):
    server, port = seed_server
    url = f"http://127.0.0.1:{port}"
    with exchange_capture(ports=[port]) as cap:
        if client == "curl":
            client_pid, done = run_curl(tmp_path, {"url": f"{url}/chunked"},
                                        {"url": f"{url}/customResponse", "data": b'{"size": 3000000}'},
                                        {"url": f"{url}/customResponse", "data": b'{"size": 100}'})
            bodies = [t.body for t in done]
        else:
            proc = spawn([go_programs["client"], "-base", url, "-out", str(tmp_path), "get=/chunked",
                          "size=3000000", "size=100"], stdout=subprocess.PIPE)
            manifest = json.loads(proc.communicate(timeout=60)[0])
            assert proc.returncode == 0
            client_pid, bodies = proc.pid, [(tmp_path / f"{i}.body").read_bytes() for i in range(3)]
        cap.wait_for(3, pid=client_pid)
        cap.wait_for(3, pid=server.pid)
    assert bodies[0] == b"line of a chunked response\n" * 5
    assert len(json.loads(bodies[1])["answer"]) == 3_000_000 and len(json.loads(bodies[2])["answer"]) == 100
    for pid in (client_pid, server.pid):
        side = cap.select(pid=pid)
        assert len(side) == 3 and len(connections_of(side)) == 1
        for i, ex in enumerate(side):
            if client == "curl":
                assert_exchange_matches(ex, done[i])
            else:
                assert (ex.request.method, ex.request.target) == (manifest[i]["method"], manifest[i]["target"])
                assert ex.response.status == 200 and not ex.flags
                assert ex.response.body == bodies[i]
        # Go's chunked coding: small flushes for /chunked, and bodies past its 2 KiB buffer
        assert [ex.response.header("Transfer-Encoding") for ex in side] == ["chunked", "chunked", None]
        assert side[2].response.header("Content-Length") == str(len(bodies[2]))
    assert only(cap.select(pid=client_pid, target="/chunked")).connection.comm == (
        "curl" if client == "curl" else "seed-client")


# ---- Python http.server: sendto/recvfrom, HTTP/1.0, close-delimited ----------------------------------

URLLIB_CLIENT = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1]) as r:
    body = r.read()
    meta = {"status": r.status, "version": r.version, "headers": r.getheaders()}
open(sys.argv[2], "wb").write(body)
open(sys.argv[2] + ".json", "w").write(json.dumps(meta))
"""

CLOSE_DELIMITED_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = bytes(range(256)) * 800
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()  # no Content-Length: the body ends when the connection closes
        for i in range(0, len(BODY), 50000):
            self.wfile.write(BODY[i:i + 50000])
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_python_http_server_with_urllib_and_curl(exchange_capture, python_server, tmp_path, spawn):
    server, port, root = python_server
    data = os.urandom(500_000)
    (root / "data.bin").write_bytes(data)
    (root / "page.txt").write_bytes(b"served by python -m http.server\n" * 30)
    with exchange_capture(ports=[port]) as cap:
        urllib = spawn([sys.executable, "-c", URLLIB_CLIENT, f"http://127.0.0.1:{port}/data.bin",
                        str(tmp_path / "urllib")])
        assert urllib.wait(30) == 0
        curl_pid, done = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/page.txt"},
                                  {"url": f"http://127.0.0.1:{port}/missing.txt"})
        cap.wait_for(3, pid=server.pid)
        cap.wait_for(1, pid=urllib.pid)
        cap.wait_for(2, pid=curl_pid)
    got = json.loads((tmp_path / "urllib.json").read_text())
    assert got["version"] == 10 and (tmp_path / "urllib").read_bytes() == data
    served = cap.select(pid=server.pid)
    assert len(served) == 3 and len(connections_of(served)) == 3  # HTTP/1.0: one connection per request
    for ex in served:
        assert ex.connection.role == Role.SERVER and ex.response.version == "HTTP/1.0"
    by_urllib = only(cap.select(pid=urllib.pid))
    from_server = only(cap.select(pid=server.pid, target="/data.bin"))
    for ex in (by_urllib, from_server):
        assert (ex.request.method, ex.request.target) == ("GET", "/data.bin") and not ex.flags
        assert ex.request.header("Connection") == "close"
        assert ex.request.header("User-Agent").startswith("Python-urllib/")
        assert ex.response.status == got["status"] == 200
        assert [list(h) for h in ex.response.headers] == got["headers"]
        assert ex.response.body == data and ex.response.body_size == len(data)
    assert by_urllib.connection.role == Role.CLIENT
    for t in done:
        assert_exchange_matches(only(cap.select(pid=curl_pid, target=t.target)), t)
        assert_exchange_matches(only(cap.select(pid=server.pid, target=t.target)), t)
    assert done[1].status == 404


def test_close_delimited_http10_response(exchange_capture, tmp_path):
    port = free_port()
    with serving([sys.executable, "-c", CLOSE_DELIMITED_SERVER, str(port)], port) as server, \
            exchange_capture(ports=[port]) as cap:
        curl_pid, (t,) = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/until-close"})
        cap.wait_for(1, pid=curl_pid)
        cap.wait_for(1, pid=server.pid)
    body = bytes(range(256)) * 800
    assert t.body == body and t.version == "HTTP/1.0"
    for pid in (curl_pid, server.pid):
        ex = only(cap.select(pid=pid))
        assert ex.response.header("Content-Length") is None and ex.response.header("Transfer-Encoding") is None
        assert_exchange_matches(ex, t)


# ---- Node.js http: writev, chunked by default ------------------------------------------------------


def test_node_http_server_with_curl(exchange_capture, node_server, tmp_path):
    server, port = node_server
    url = f"http://127.0.0.1:{port}"
    upload = os.urandom(50_000)
    with exchange_capture(ports=[port]) as cap:
        curl_pid, done = run_curl(tmp_path, {"url": f"{url}/hello"}, {"url": f"{url}/stream?n=3"},
                                  {"url": f"{url}/big?size=300000"},
                                  {"url": f"{url}/echo", "data": upload,
                                   "headers": ["Content-Type: application/x-bin"]})
        cap.wait_for(4, pid=curl_pid)
        cap.wait_for(4, pid=server.pid)
    assert done[0].body == b"hello from node\n" and done[3].body == upload
    assert done[1].body == b"".join(b"node line %d\n" % i for i in range(3)) and len(done[2].body) == 300_000
    for pid, role in ((curl_pid, Role.CLIENT), (server.pid, Role.SERVER)):
        side = cap.select(pid=pid)
        assert len(side) == 4 and len(connections_of(side)) == 1
        for ex, t in zip(side, done):
            assert ex.connection.role == role
            assert_exchange_matches(ex, t)
        assert [ex.response.header("Transfer-Encoding") for ex in side] == [None, "chunked", "chunked", "chunked"]
    assert only(cap.select(pid=server.pid, target="/hello")).connection.comm == "node"


def test_node_chunked_response_written_in_many_pieces(exchange_capture, node_server, tmp_path):
    """20 res.write() calls in one tick: Node sends headers and all 20 chunks (size line, data, CRLF each)
    with ONE writev() of 81 iovecs, 513 bytes. The server side must capture that response whole, as the
    client side does."""
    server, port = node_server
    with exchange_capture(ports=[port]) as cap:
        curl_pid, (t,) = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/stream?n=20"})
        cap.wait_for(1, pid=curl_pid)
        cap.wait_for(1, pid=server.pid)
    assert t.body == b"".join(b"node line %d\n" % i for i in range(20))
    assert_exchange_matches(only(cap.select(pid=curl_pid)), t)
    assert_exchange_matches(only(cap.select(pid=server.pid)), t)


# ---- client side only: connect hook, connections opened before the tracer --------------------------


def test_client_side_only_curl_to_a_server_started_before_the_tracer(exchange_capture, python_server, tmp_path):
    """Only curl is traced (comm filter): its exchanges come from the connect hook, complete, with its
    own endpoints; the server, which accepted before and after the tracer started, is not traced."""
    server, port, root = python_server
    (root / "a.txt").write_bytes(b"first file\n" * 100)
    (root / "b.bin").write_bytes(os.urandom(80_000))
    with exchange_capture(ports=[port], comm="curl") as cap:
        curl_pid, done = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/a.txt"},
                                  {"url": f"http://127.0.0.1:{port}/b.bin"})
        cap.wait_for(2, pid=curl_pid)
    captured = cap.select(port=port)
    assert len(captured) == 2
    for ex, t in zip(captured, done):
        assert ex.connection.pid == curl_pid and ex.connection.comm == "curl"
        assert ex.connection.role == Role.CLIENT
        assert ex.connection.remote == Endpoint("127.0.0.1", port)
        assert ex.connection.local == Endpoint("127.0.0.1", t.local_port)
        assert_exchange_matches(ex, t)  # and no flags: not mid-stream
    assert len(connections_of(captured)) == 2  # HTTP/1.0 server: a connection per request


def test_connection_opened_before_the_tracer_is_mid_stream(exchange_capture, nginx, tmp_path, spawn):
    _, port, _ = nginx
    specs = [nginx_spec(i) for i in range(4)]
    client = keepalive_client(spawn, "127.0.0.1", port, specs, tmp_path, wait_stdin=True)
    try:
        local_port = int(client.stdout.readline().split()[1])

        def step(i):
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.stdout.readline() == f"done {i}\n"

        step(0)  # one exchange before the tracer exists
        with exchange_capture(ports=[port]) as cap:
            for i in (1, 2, 3):
                step(i)
            cap.wait_for(3, pid=client.pid)
            cap.wait_for(3, comm="nginx", role=Role.SERVER, port=port)
            client.stdin.write("close\n")
            client.stdin.flush()
            assert client.wait(30) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    out = json.loads((tmp_path / "out.json").read_text())
    for side, role in ((cap.select(pid=client.pid), Role.CLIENT),
                       (cap.select(comm="nginx", port=port), Role.SERVER)):
        assert [ex.request.target for ex in side] == [s["target"] for s in specs[1:]]
        for ex, spec, got in zip(side, specs[1:], out["responses"][1:]):
            # the kernel never saw connect()/accept(): the role comes from who sent the requests
            assert ex.connection.role == role
            assert ex.flags == {Flag.MID_STREAM}, ex.flags
            assert_matches_http_client(ex, spec, got)
        client_end = side[0].connection.local if role == Role.CLIENT else side[0].connection.remote
        assert client_end == Endpoint("127.0.0.1", local_port)


# ---- IPv6 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["nginx", "python"])
def test_ipv6_loopback_addresses(exchange_capture, request, tmp_path, server):
    if server == "nginx":
        _, port, www = request.getfixturevalue("nginx")
        path = "/static/v6.txt"
    else:
        _, port, www = request.getfixturevalue("python_server")
        path = "/v6.txt"
    (www / "v6.txt").write_bytes(b"over ipv6\n" * 50)
    with exchange_capture(ports=[port]) as cap:
        curl_pid, (t,) = run_curl(tmp_path, {"url": f"http://[::1]:{port}{path}"}, extra=["-6"])
        cap.wait_for(1, pid=curl_pid)
        cap.wait_for(1, role=Role.SERVER, port=port)
    client = only(cap.select(pid=curl_pid))
    served = only(cap.select(role=Role.SERVER, port=port))
    assert client.connection.local == Endpoint("::1", t.local_port)
    assert client.connection.remote == Endpoint("::1", port)
    assert served.connection.local == Endpoint("::1", port)
    assert served.connection.remote == Endpoint("::1", t.local_port)
    assert_exchange_matches(client, t)
    if server == "nginx":  # sendfile on the server side
        assert_exchange_matches(served, t, flags={Flag.NOT_VISIBLE}, response_body_visible=False)
    else:
        assert_exchange_matches(served, t)


# ---- the CLI, end to end --------------------------------------------------------------------------


def test_cli_json_lines_against_nginx(nginx, tmp_path):
    """`python -m httptrace --port P --format json -c 2N` while curl makes N requests: N exchanges seen
    from each side, every field as curl saw it."""
    _, port, _ = nginx
    n = 3
    cli = subprocess.Popen([sys.executable, "-m", "httptrace", "--port", str(port), "--format", "json",
                            "--path", r"^/echo\?cli=", "-c", str(2 * n)],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 30
        while "attached" not in seen:  # the CLI logs 'attached' on stderr once every hook is in place
            line = cli.stderr.readline()
            assert line or cli.poll() is None, f"httptrace exited before attaching: {seen}"
            assert time.monotonic() < deadline, f"httptrace did not attach: {seen}"
            seen += line
        curls = [run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/echo?cli={i}", "headers": [f"X-Req: {i}"]})
                 for i in range(n)]
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2 * n
    for i, (curl_pid, (t,)) in enumerate(curls):
        (client,) = [r for r in records if r["pid"] == curl_pid]
        (served,) = [r for r in records if r["role"] == "server" and r["request"]["target"] == t.target]
        assert client["role"] == "client" and client["comm"] == "curl"
        assert served["comm"] == "nginx"
        assert client["local"] == served["remote"] == {"ip": "127.0.0.1", "port": t.local_port}
        assert client["remote"] == served["local"] == {"ip": "127.0.0.1", "port": port}
        for r in (client, served):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", r["time"])
            assert r["tls"] is False and r["flags"] == [] and r["latency_ms"] >= 0
            assert (r["request"]["method"], r["request"]["target"]) == ("GET", f"/echo?cli={i}")
            assert [tuple(h) for h in r["request"]["headers"]] == t.sent_headers
            assert r["request"]["body"] == "" and r["request"]["body_size"] == 0
            assert r["response"]["status"] == t.status == 200 and r["response"]["version"] == t.version
            assert [tuple(h) for h in r["response"]["headers"]] == t.headers
            assert r["response"]["body"] == t.body.decode() == f"GET /echo?cli={i}\n"
            assert r["response"]["body_encoding"] == "utf-8" and r["response"]["body_size"] == len(t.body)
    assert "exchanges" in err  # the summary line
