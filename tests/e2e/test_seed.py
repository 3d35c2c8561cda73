"""The seed scenario: the Go REST server of the original tool, driven by curl, a Python keep-alive client
and a Go client. Every request and response must come out whole, byte-equal to what the client got,
and each exchange must come out as soon as it completes (not when its keep-alive connection closes).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from httptrace.exchange import Role

from .conftest import HERE, assert_exchange_matches, run_curl

KEEPALIVE_CLIENT = os.path.join(HERE, "keepalive_client.py")
SEED_CHUNK = 30 * 1024  # the original tool read sockets in 30 KiB chunks: one byte more crosses a boundary
MAX_SIZE = 10 * 1024 * 1024


def answer_of(body: bytes) -> str:
    return json.loads(body)["answer"]


def one(exchanges, what=""):
    assert len(exchanges) == 1, f"expected exactly one exchange {what}, got {len(exchanges)}: {exchanges}"
    return exchanges[0]


@pytest.mark.parametrize("size", [12, SEED_CHUNK + 1, 1_000_000, MAX_SIZE], ids=["small", "30KiB+1", "1MB", "10MB"])
def test_curl_answers_are_captured_whole(exchange_capture, seed_server, tmp_path, size):
    server, port = seed_server
    # 10 MB crosses the ring buffer twice (server and client side): give it room so a busy machine
    # that delays the reader thread does not turn this into a drop test.
    with exchange_capture(ports=[port], ring_buffer_size=128 << 20) as cap:
        curl_pid, (t,) = run_curl(tmp_path, {"url": f"http://127.0.0.1:{port}/customResponse",
                                             "data": b'{"size": %d}' % size,
                                             "headers": ["Content-Type: application/json"]})
        cap.wait_for(2)
    assert t.status == 200 and len(answer_of(t.body)) == size
    served = one(cap.select(pid=server.pid), "from the server")
    asked = one(cap.select(pid=curl_pid), "from curl")
    assert served.connection.role == Role.SERVER and served.connection.comm == "seed-server"
    assert asked.connection.role == Role.CLIENT and asked.connection.comm == "curl"
    for ex in (served, asked):
        assert_exchange_matches(ex, t)
    assert asked.connection.local.port == served.connection.remote.port == t.local_port
    assert cap.stats["drops"] == 0 and cap.stats["parse_errors"] == 0


def test_bad_requests_get_their_400_answers(exchange_capture, seed_server, tmp_path):
    server, port = seed_server
    url = f"http://127.0.0.1:{port}/customResponse"
    with exchange_capture(ports=[port]) as cap:
        bad_json_pid, (bad_json,) = run_curl(tmp_path, {"url": url + "?case=json", "data": b'{"size": twelve}'})
        too_big_pid, (too_big,) = run_curl(tmp_path, {"url": url + "?case=big",
                                                      "data": b'{"size": %d}' % (MAX_SIZE + 1)})
        cap.wait_for(4)
    assert bad_json.status == too_big.status == 400
    assert b"bad JSON" in bad_json.body and b"out of range" in too_big.body
    for pid, t in ((bad_json_pid, bad_json), (too_big_pid, too_big)):
        assert_exchange_matches(one(cap.select(pid=pid)), t)
        assert_exchange_matches(one(cap.select(pid=server.pid, target=t.target)), t)
    assert len(cap.select(port=port)) == 4


def test_curl_keepalive_sequence_is_captured_request_by_request(exchange_capture, seed_server, tmp_path):
    """Several requests on one connection (curl --next reuses it): each is its own exchange, in order."""
    server, port = seed_server
    url = f"http://127.0.0.1:{port}"
    transfers = [{"url": f"{url}/customResponse?n=1", "data": b'{"size": 1}'},
                 {"url": f"{url}/customResponse?n=2", "data": b'{"size": %d}' % (SEED_CHUNK + 1)},
                 {"url": f"{url}/customResponse?n=3", "data": b'not json at all'},
                 {"url": f"{url}/chunked"},
                 {"url": f"{url}/customResponse?n=5", "data": b'{"size": 200000}'}]
    with exchange_capture(ports=[port]) as cap:
        curl_pid, done = run_curl(tmp_path, *transfers)
        cap.wait_for(5, pid=server.pid)
        cap.wait_for(5, pid=curl_pid)
    assert len({t.local_port for t in done}) == 1, "curl did not reuse its connection"
    assert [t.status for t in done] == [200, 200, 400, 200, 200]
    for pid in (server.pid, curl_pid):
        captured = cap.select(pid=pid)
        assert len({(ex.connection.fd, ex.connection.tsid) for ex in captured}) == 1, "one connection expected"
        assert [ex.request.target for ex in captured] == [t.target for t in done]
        for ex, t in zip(captured, done):
            assert_exchange_matches(ex, t)
    assert len(cap.select(port=port)) == 10


def test_exchanges_come_out_while_the_keepalive_connection_is_open(exchange_capture, seed_server, tmp_path, spawn):
    """The seed's own tool only reported keep-alive exchanges when the connection closed. Here the client
    holds its connection open (it waits on stdin) and every exchange, from both sides, must arrive
    before the client is told to send the next request."""
    server, port = seed_server
    sizes = [5, SEED_CHUNK + 1, 70_000]
    specs = [{"method": "POST", "target": f"/customResponse?step={i}", "body": json.dumps({"size": size}),
              "headers": {"Content-Type": "application/json"}} for i, size in enumerate(sizes)]
    (tmp_path / "spec.json").write_text(json.dumps(specs))
    with exchange_capture(ports=[port]) as cap:
        client = spawn([sys.executable, KEEPALIVE_CLIENT, "127.0.0.1", str(port), str(tmp_path / "spec.json"),
                        str(tmp_path / "out.json"), "--wait-stdin"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().startswith("connected ")
        for i in range(len(specs)):
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.stdout.readline() == f"done {i}\n"
            target = specs[i]["target"]
            cap.wait_for(pid=server.pid, target=target, timeout=20)
            cap.wait_for(pid=client.pid, target=target, timeout=20)
            assert client.poll() is None  # the connection is still open: the client is waiting on us
        closing_at = time.monotonic()
        client.stdin.write("close\n")
        client.stdin.flush()
        assert client.wait(30) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    for pid, role in ((server.pid, Role.SERVER), (client.pid, Role.CLIENT)):
        captured = cap.select(pid=pid)
        assert [ex.request.target for ex in captured] == [s["target"] for s in specs]
        assert len({(ex.connection.fd, ex.connection.tsid) for ex in captured}) == 1
        for ex, spec, got, size in zip(captured, specs, out["responses"], sizes):
            assert ex.connection.role == role and not ex.flags, ex.flags
            assert ex.request.method == "POST" and ex.request.body == spec["body"].encode()
            assert ex.request.header("Content-Type") == "application/json"
            assert ex.response.status == got["status"] == 200
            assert [list(h) for h in ex.response.headers] == got["headers"]
            assert ex.response.body == base64.b64decode(got["body"])
            assert len(answer_of(ex.response.body)) == size
    arrived = dict(zip(map(id, cap.exchanges), cap.arrived))
    assert all(arrived[id(ex)] < closing_at for ex in cap.select(port=port))


def test_go_client_is_captured_from_the_client_side(exchange_capture, seed_server, go_programs, tmp_path, spawn):
    server, port = seed_server
    specs = ["size=10", f"size={SEED_CHUNK + 1}", "size=1000000", "raw={oops", "get=/chunked", f"size={MAX_SIZE + 1}"]
    with exchange_capture(ports=[port]) as cap:
        client = spawn([go_programs["client"], "-base", f"http://127.0.0.1:{port}", "-out", str(tmp_path),
                        *specs], stdout=subprocess.PIPE)
        out, _ = client.communicate(timeout=60)
        assert client.returncode == 0
        cap.wait_for(len(specs), pid=client.pid)
        cap.wait_for(len(specs), pid=server.pid)
    manifest = json.loads(out)
    assert [r["status"] for r in manifest] == [200, 200, 200, 400, 200, 400]
    assert len({r["local_port"] for r in manifest}) == 1 and all(r["reused"] for r in manifest[1:])
    for pid, role, comm in ((client.pid, Role.CLIENT, "seed-client"), (server.pid, Role.SERVER, "seed-server")):
        captured = cap.select(pid=pid)
        assert len(captured) == len(specs)
        for ex, r in zip(captured, manifest):
            assert (ex.connection.role, ex.connection.comm) == (role, comm)
            client_end = ex.connection.remote if role == Role.SERVER else ex.connection.local
            assert client_end.port == r["local_port"]
            assert (ex.request.method, ex.request.target) == (r["method"], r["target"])
            assert ex.request.header("User-Agent") == "Go-http-client/1.1"
            assert ex.response.status == r["status"] and not ex.flags, (ex.response.status, ex.flags)
            body = (tmp_path / f"{r['index']}.body").read_bytes()
            assert ex.response.body == body and ex.response.body_size == r["body_size"] == len(body)
            for name, values in r["headers"].items():
                assert ex.response.header(name) == values[0], name
    (chunked,) = cap.select(pid=client.pid, target="/chunked")
    assert chunked.response.header("Transfer-Encoding") == "chunked"
    assert chunked.response.body == b"line of a chunked response\n" * 5
    big = cap.select(pid=client.pid, target="/customResponse?i=2")[0]
    assert len(answer_of(big.response.body)) == 1_000_000
