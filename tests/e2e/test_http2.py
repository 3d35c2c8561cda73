"""HTTP/2 and gRPC end to end: real servers and clients, the real kernel agent, both roles.

They rely on the kernel classifying HTTP/2 connections (the client preface, a server's first
SETTINGS, a chain of frame headers for one found mid-stream; see tests/e2e/test_http2_kernel.py)
and reporting on after a `101` to `Upgrade: h2c`.

Peers: nginx (h2c with prior knowledge, and h2 over TLS), nghttp and h2load (nghttp2-client),
curl, Node's http2 module, grpcio, and tests/e2e/servers/h2_peer.py (built on h2: prior knowledge,
h2c upgrade, and a client that can pause mid-connection).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from httptrace.exchange import Flag, Role

from .conftest import HERE, free_port, require_tool, run_curl, serving, start_nginx

SERVERS = os.path.join(HERE, "servers")


def http2_exchanges(capture, who, count: int, timeout: float = 20.0) -> list:
    """`who`: a pid, or "nginx" (its worker, not the pid we started, serves the connections)."""
    criteria = {"comm": "nginx", "role": Role.SERVER} if who == "nginx" else {"pid": who}
    found = capture.wait_for(count, timeout=timeout, **criteria)
    return [ex for ex in found if ex.stream_id is not None]


def assert_clean(exchange, *extra):
    assert exchange.flags == frozenset(extra), (exchange.request.target, exchange.flags)


@pytest.fixture
def h2c_nginx(tmp_path):
    """(process, port, www) of nginx speaking h2c; www has a.txt and a 1 MiB big.bin."""
    port = free_port()
    workdir = tmp_path / "nginx"
    (workdir / "www").mkdir(parents=True)
    (workdir / "www" / "a.txt").write_bytes(b"small file\n")
    (workdir / "www" / "big.bin").write_bytes(os.urandom(1 << 20))
    proc = start_nginx(workdir, port, "nginx-h2c.conf.template")
    try:
        yield proc, port, workdir / "www"
    finally:
        proc.terminate()
        proc.wait(10)


def test_nginx_h2c_several_urls_on_one_connection(h2c_nginx, exchange_capture, spawn):
    nginx, port, www = h2c_nginx
    nghttp = require_tool("nghttp")
    paths = ["/hello", "/static/a.txt", "/static/big.bin", "/static/a.txt?again"]   # nghttp skips repeats
    with exchange_capture(ports=[port]) as capture:
        client = spawn([nghttp, "-n", *[f"http://127.0.0.1:{port}{path}" for path in paths]])
        assert client.wait(30) == 0
        for pid, role in ((client.pid, Role.CLIENT), ("nginx", Role.SERVER)):
            got = sorted(http2_exchanges(capture, pid, len(paths)), key=lambda ex: ex.stream_id)
            assert [ex.request.target for ex in got] == paths
            assert len({ex.stream_id for ex in got}) == len(paths)
            expected = [b"hello from nginx\n", b"small file\n", (www / "big.bin").read_bytes(), b"small file\n"]
            for ex, body in zip(got, expected):
                assert ex.connection.role is role
                assert (ex.request.version, ex.response.version, ex.response.status) == ("HTTP/2", "HTTP/2", 200)
                assert ex.request.headers[:4] == ((":method", "GET"), (":path", ex.request.target), (":scheme", "http"),
                                                  (":authority", f"127.0.0.1:{port}"))
                assert ex.request.header("user-agent").startswith("nghttp2/")
                assert ex.response.body == body and ex.response.body_size == len(body)
                assert ex.response.header("content-length") in (None, str(len(body)))
                assert_clean(ex)        # the repeats came from the dynamic table, all resolved


def test_nginx_h2c_post(h2c_nginx, exchange_capture, tmp_path, spawn):
    # nghttp, not curl: curl 7.88.1 reports a stream error when nginx answers before reading the body.
    _, port, _ = h2c_nginx
    body = tmp_path / "body.bin"
    body.write_bytes(b"a=1&b=\x00\xff" * 1000)
    with exchange_capture(ports=[port]) as capture:
        client = spawn([require_tool("nghttp"), "-d", str(body), f"http://127.0.0.1:{port}/echo?x=1"],
                       stdout=subprocess.PIPE)
        out, _ = client.communicate(timeout=30)
        assert out == b"POST /echo?x=1\n"
        for who, role in ((client.pid, Role.CLIENT), ("nginx", Role.SERVER)):
            [ex] = http2_exchanges(capture, who, 1)
            assert (ex.request.method, ex.request.target, ex.connection.role) == ("POST", "/echo?x=1", role)
            assert ex.request.body == body.read_bytes()
            assert (ex.response.version, ex.response.status, ex.response.body) == ("HTTP/2", 200, out)
            # nginx answers from `return` and may reset the upload it no longer needs.
            assert ex.flags <= {Flag.RESET} and ex.reset_code in (None, 0)


def test_h2load_many_concurrent_streams_each_captured_once(h2c_nginx, exchange_capture, spawn):
    nginx, port, _ = h2c_nginx
    h2load = require_tool("h2load")
    total = 300
    with exchange_capture(ports=[port]) as capture:
        client = spawn([h2load, "-n", str(total), "-c", "3", "-m", "25", f"http://127.0.0.1:{port}/hello"],
                       stdout=subprocess.PIPE, text=True)
        out, _ = client.communicate(timeout=60)
        assert f"{total} succeeded" in out, out
        for pid in (client.pid, "nginx"):
            got = http2_exchanges(capture, pid, total, timeout=30)
            assert len(got) == total
            assert len({(ex.connection.fd, ex.connection.tsid, ex.stream_id) for ex in got}) == total
            assert all(ex.response.body == b"hello from nginx\n" and not ex.flags for ex in got)
    assert sum(capture.drops.values()) == 0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_nginx_h2_over_tls_with_curl(certificate, tmp_path, exchange_capture):
    workdir = tmp_path / "nginx-tls"
    (workdir / "www").mkdir(parents=True)
    for source in certificate:
        (workdir / source.name).write_bytes(source.read_bytes())
    port = free_port()
    nginx = start_nginx(workdir, port, "nginx-h2-tls.conf.template")
    try:
        with exchange_capture(ports=[port]) as capture:
            pid, [transfer] = run_curl(tmp_path, {"url": f"https://127.0.0.1:{port}/hello"}, extra=["--http2", "-k"])
            assert transfer.version == "HTTP/2"
            for who, role in ((pid, Role.CLIENT), ("nginx", Role.SERVER)):
                [ex] = http2_exchanges(capture, who, 1)
                assert ex.connection.tls and ex.connection.role is role
                assert ex.request.header(":scheme") == "https"
                assert ex.response.body == transfer.body == b"hello over h2\n"
                assert_clean(ex)
    finally:
        nginx.terminate()
        nginx.wait(10)


@pytest.fixture
def h2_peer_server():
    port = free_port()
    with serving([sys.executable, os.path.join(SERVERS, "h2_peer.py"), "server", str(port)], port) as proc:
        yield proc, port


def test_h2c_upgrade_with_curl(h2_peer_server, exchange_capture, tmp_path):
    server, port = h2_peer_server
    with exchange_capture(ports=[port]) as capture:
        pid, [transfer] = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/up"}, extra=["--http2"])
        assert (transfer.version, transfer.body) == ("HTTP/2", b"hello from h2")
        for who in (pid, server.pid):
            switched, upgraded = sorted(capture.wait_for(2, pid=who), key=lambda ex: ex.stream_id or 0)
            assert (switched.response.status, switched.flags) == (101, frozenset({Flag.UPGRADED}))
            assert (upgraded.stream_id, upgraded.request.version, upgraded.request.target) == (1, "HTTP/1.1", "/up")
            assert (upgraded.response.version, upgraded.response.body) == ("HTTP/2", b"hello from h2")
            assert_clean(upgraded)


def test_node_http2_server_with_curl(exchange_capture, tmp_path):
    node = require_tool("node")
    port = free_port()
    with serving([node, os.path.join(SERVERS, "node_http2_server.js"), str(port)], port) as server:
        with exchange_capture(ports=[port]) as capture:
            # One curl per request: curl 7.88.1 fails to reuse an h2c connection after the first transfer.
            _, [hello] = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/hello"}, extra=["--http2-prior-knowledge"])
            _, [echo] = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/echo", "data": b"x" * 60000},
                                 extra=["--http2-prior-knowledge"])
            got = sorted(http2_exchanges(capture, server.pid, 2), key=lambda ex: ex.request.target)
            assert [ex.request.target for ex in got] == ["/echo", "/hello"]
            assert got[0].request.body == got[0].response.body == echo.body == b"x" * 60000
            assert got[1].response.body == hello.body == b"hello from node\n"
            assert all(ex.connection.role is Role.SERVER and not ex.flags for ex in got)


@pytest.fixture
def grpc_server():
    port = free_port()
    with serving([sys.executable, os.path.join(SERVERS, "grpc_peer.py"), "server", str(port)], port) as proc:
        yield proc, port


def test_grpc_calls_as_the_client_saw_them(grpc_server, exchange_capture, spawn):
    server, port = grpc_server
    with exchange_capture(ports=[port]) as capture:
        client = spawn([sys.executable, os.path.join(SERVERS, "grpc_peer.py"), "client", str(port)],
                       stdout=subprocess.PIPE, text=True)
        out, _ = client.communicate(timeout=60)
        seen = [json.loads(line) for line in out.splitlines()]
        assert [call["method"] for call in seen] == ["Echo", "Echo", "List", "Fail"]
        for pid in (client.pid, server.pid):
            calls = sorted((ex for ex in http2_exchanges(capture, pid, 4) if ex.grpc is not None),
                           key=lambda ex: (ex.connection.tsid, ex.stream_id))
            assert len(calls) == 4
            for ex, call in zip(calls, seen):
                assert (ex.grpc.service, ex.grpc.method) == ("demo.Shop", call["method"])
                assert ex.grpc.status == call["status"]
                assert ex.grpc.message == call["details"]
                assert (ex.grpc.request_messages, ex.grpc.response_messages) == (call["sent"], call["received"])
                assert Flag.HPACK_INCOMPLETE not in ex.flags and Flag.GAP not in ex.flags
            assert calls[1].grpc.compressed and not calls[0].grpc.compressed     # the gzip call
            assert calls[2].response.body_size > 40000                           # a message over 16 KiB


def test_connection_opened_before_the_tracer(h2_peer_server, exchange_capture, spawn):
    server, port = h2_peer_server
    client = spawn([sys.executable, os.path.join(SERVERS, "h2_peer.py"), "client", str(port)],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    before = [{"path": "/hello", "headers": [["x-tenant", "acme"], ["x-trace", "t-1"]]},
              {"path": "/hello", "headers": [["x-tenant", "acme"], ["x-trace", "t-2"]]}]
    after = [{"path": "/hello", "headers": [["x-tenant", "acme"], ["x-trace", "t-3"]]},     # x-tenant indexed before
             {"path": "/echo", "headers": [["x-fresh", "new-1"]], "body": "payload"},
             {"path": "/hello", "headers": [["x-fresh", "new-1"]]}]                         # indexed after the join
    for spec in before:
        client.stdin.write(json.dumps(spec) + "\n")
    client.stdin.write('{"pause": true}\n')
    client.stdin.flush()
    responses = [json.loads(client.stdout.readline()) for _ in before]
    assert client.stdout.readline().strip() == "paused"
    with exchange_capture(ports=[port]) as capture:
        client.stdin.write("\n" + "".join(json.dumps(spec) + "\n" for spec in after))
        client.stdin.close()
        responses += [json.loads(line) for line in client.stdout]
        assert client.wait(30) == 0
        for pid in (client.pid, server.pid):
            got = sorted(http2_exchanges(capture, pid, len(after)), key=lambda ex: ex.stream_id)
            assert [ex.stream_id for ex in got] == [r["stream_id"] for r in responses[len(before):]]
            for ex, spec, response in zip(got, after, responses[len(before):]):
                assert Flag.MID_STREAM in ex.flags
                sent = [tuple(field) for field in spec["headers"]]
                shown = [field for field in ex.request.headers if field[0][:1] != ":"]
                assert all(field in sent for field in shown)            # nothing wrong, ever
                # Flagged exactly when a field really was unknown (4 pseudo-headers; the server sends
                # :status, content-type and content-length).
                unknown = len(ex.request.headers) < 4 + len(sent) or len(ex.response.headers) < 3
                assert (Flag.HPACK_INCOMPLETE in ex.flags) == unknown
                assert ex.response.body.decode("latin-1") == response["body"]
            assert ("x-fresh", "new-1") in got[2].request.headers      # inserted after we joined: known
