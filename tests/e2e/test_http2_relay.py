"""HTTP/2 from real peers through the reassembler, without the kernel: a loopback relay between
client and server records every read as the traced client's events (one per recv(), so frames are
split wherever the peers' writes and TCP split them), and the recording is fed to a Reassembler.

This checks the user-space half of issue 15 against nginx, nghttp2 (nghttp, h2load), grpcio, Node
and curl while the kernel half (tests/e2e/test_http2.py) is missing; it needs no BPF.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

from httptrace.exchange import Connection, Endpoint, Flag, Role
from httptrace.sessions import Reassembler

from .conftest import free_port, require_tool, serving
from .test_http2 import SERVERS, h2_peer_server, h2c_nginx, grpc_server  # noqa: F401 (fixtures)


class Relay:
    """Listens on `port`, connects each client to `target`, records (connection, direction, bytes)."""

    def __init__(self, target: int):
        self.target = target
        self.port = free_port()
        self.records: list[tuple[int, int, bytes, int]] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            index = self._connections
            self._connections += 1
            for source, sink, direction in ((client, server, 0), (server, client, 1)):
                threading.Thread(target=self._pump, args=(index, source, sink, direction), daemon=True).start()

    def _pump(self, index, source, sink, direction):
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:        # recorded before it is passed on: the order of cause and effect
                self.records.append((index, direction, data, time.time_ns()))
                sink.sendall(data)

    def exchanges(self) -> tuple[list, dict]:
        self._listener.close()
        time.sleep(0.2)
        r = Reassembler(max_body=4 << 20)
        positions = {}
        with self._lock:
            records = list(self.records)
        for index in {record[0] for record in records}:
            r.open((1, index, index), Connection(pid=1, fd=index, tsid=index, comm="client", role=Role.CLIENT,
                                                 local=Endpoint("127.0.0.1", 1), remote=Endpoint("127.0.0.1", 2)))
        for index, direction, data, ts in records:
            pos = positions.get((index, direction), 0)
            r.data((1, index, index), direction, pos, data, 0, ts)
            positions[index, direction] = pos + len(data)
        r.flush(time.time_ns())
        return r.drain(), r.stats


def test_relay_nginx_nghttp_and_h2load(h2c_nginx):  # noqa: F811
    _, port, www = h2c_nginx
    relay = Relay(port)
    paths = ["/hello", "/static/a.txt", "/static/big.bin", "/static/a.txt?again"]   # nghttp skips repeats
    subprocess.run([require_tool("nghttp"), "-n", *[f"http://127.0.0.1:{relay.port}{p}" for p in paths]],
                   check=True, timeout=30)
    out = subprocess.run([require_tool("h2load"), "-n", "200", "-c", "2", "-m", "20",
                          f"http://127.0.0.1:{relay.port}/hello"], capture_output=True, text=True, timeout=60).stdout
    assert "200 succeeded" in out
    got, stats = relay.exchanges()
    first = sorted((ex for ex in got if ex.connection.fd == 0), key=lambda ex: ex.stream_id)
    assert [ex.request.target for ex in first] == paths
    bodies = [b"hello from nginx\n", b"small file\n", (www / "big.bin").read_bytes(), b"small file\n"]
    assert [ex.response.body for ex in first] == bodies
    assert all(not ex.flags and ex.request.version == "HTTP/2" for ex in got)
    loaded = [ex for ex in got if ex.connection.fd > 0]
    assert len(loaded) == 200 and len({(ex.connection.fd, ex.stream_id) for ex in loaded}) == 200
    assert stats["parse_errors"] == stats["internal_errors"] == 0


def test_relay_curl_h2c_upgrade_and_prior_knowledge(h2_peer_server):  # noqa: F811
    _, port = h2_peer_server
    relay = Relay(port)
    upgraded = subprocess.run([require_tool("curl"), "-sS", "--http2", f"http://127.0.0.1:{relay.port}/up"],
                              capture_output=True, check=True, timeout=30).stdout
    echoed = subprocess.run([require_tool("curl"), "-sS", "--http2-prior-knowledge", "--data-binary", "@-",
                             f"http://127.0.0.1:{relay.port}/echo"], input=b"\x00\x01" * 30000,
                            capture_output=True, check=True, timeout=30).stdout
    got, _ = relay.exchanges()
    switched, answer, echo = sorted(got, key=lambda ex: (ex.connection.fd, ex.stream_id or 0))
    assert (switched.response.status, switched.flags) == (101, frozenset({Flag.UPGRADED}))
    assert (answer.stream_id, answer.response.body, answer.flags) == (1, upgraded, frozenset())
    assert echo.request.body == echo.response.body == echoed == b"\x00\x01" * 30000


def test_relay_grpc(grpc_server):  # noqa: F811
    _, port = grpc_server
    relay = Relay(port)
    out = subprocess.run([sys.executable, os.path.join(SERVERS, "grpc_peer.py"), "client", str(relay.port)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    seen = [json.loads(line) for line in out.splitlines()]
    got, _ = relay.exchanges()
    calls = sorted((ex for ex in got if ex.grpc is not None), key=lambda ex: ex.stream_id)
    assert [(ex.grpc.method, ex.grpc.status, ex.grpc.message, ex.grpc.request_messages, ex.grpc.response_messages)
            for ex in calls] == [(c["method"], c["status"], c["details"], c["sent"], c["received"]) for c in seen]
    assert [ex.grpc.compressed for ex in calls] == [False, True, False, False]
    assert all(Flag.HPACK_INCOMPLETE not in ex.flags for ex in calls)


def test_relay_node_http2():
    node = require_tool("node")
    port = free_port()
    with serving([node, os.path.join(SERVERS, "node_http2_server.js"), str(port)], port):
        relay = Relay(port)
        hello = subprocess.run([require_tool("curl"), "-sS", "--http2-prior-knowledge",
                                f"http://127.0.0.1:{relay.port}/hello"], capture_output=True, check=True).stdout
        got, _ = relay.exchanges()
    [ex] = got
    assert (ex.response.status, ex.response.body, ex.flags) == (200, hello, frozenset())
