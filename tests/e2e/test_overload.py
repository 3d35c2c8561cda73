"""Overload: the kernel sheds whole HTTP/1 exchanges, counted, instead of dropping bytes.

A tiny ring buffer and a reader that pauses: while nobody reads, the ring fills past its shedding mark
and every later request is skipped whole with its response. What comes out must be complete exchanges,
each response answering its own request, and captured + skipped must be what the client sent; once the
reader has caught up, the same connections are captured again.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from httptrace import Tracer

from .conftest import start_nginx, free_port

RING = 64 * 1024   # sheds past 56 KiB waiting: about a hundred small exchanges
CONNECTIONS = 4

# Requests in bursts on CONNECTIONS keep-alive connections, made at the first line on stdin; each next line on stdin "N PATH" sends N requests
# (round-robin over the connections) to PATH?i=<sequence number> and prints one JSON line: the targets
# sent and, for each, the status and body received.
CLIENT = r"""
import http.client, json, sys
port = int(sys.argv[1])
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(int(sys.argv[2]))]
sys.stdin.readline()   # connected once the tracer is attached: it sees them from the start
for c in conns:
    c.connect()
print("ready", flush=True)
sent = 0
for line in sys.stdin:
    n, path = line.split()
    out = []
    for i in range(int(n)):
        target = f"{path}?i={sent}"
        sent += 1
        c = conns[i % len(conns)]
        c.request("GET", target)
        r = c.getresponse()
        out.append([target, r.status, r.read().decode("latin-1")])
    print(json.dumps(out), flush=True)
"""


def drain(batches, quiet_s: float = 1.0) -> list:
    """Pull exchange batches until none came for quiet_s."""
    got, last = [], time.monotonic()
    while time.monotonic() - last < quiet_s:
        batch = next(batches)
        if batch:
            got.extend(batch)
            last = time.monotonic()
    return got


@pytest.mark.parametrize("side", ["client", "server"])
def test_overload_sheds_whole_exchanges_and_counts_them(tmp_path, side):
    port = free_port()
    nginx = start_nginx(tmp_path / "nginx", port)
    (tmp_path / "nginx" / "www" / "file.txt").write_bytes(b"x" * 3000)   # served with sendfile()
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(CONNECTIONS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(open(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read().split()[0])
        path = "/echo" if side == "client" else "/static/file.txt"
        traced = client.pid if side == "client" else worker

        def burst(n: int) -> list:
            client.stdin.write(f"{n} {path}\n")
            client.stdin.flush()
            return json.loads(client.stdout.readline())

        with Tracer(pids=[traced], ring_buffer_size=RING, tls=False) as tracer:
            batches = tracer.exchange_batches()
            next(batches)
            client.stdin.write("connect\n")
            client.stdin.flush()
            assert client.stdout.readline() == "ready\n"
            sent = burst(1500)        # nobody reads meanwhile: the ring fills, then requests are skipped
            first = drain(batches)
            skipped_then = tracer.skipped()
            sent += burst(40)         # the reader has caught up: captured again
            second = drain(batches)
            tracer.stop()
            rest = [ex for batch in batches for ex in batch]
            stats = tracer.stats()
    finally:
        client.kill()
        client.wait()
        nginx.terminate()
        nginx.wait(10)

    answers = {target: (status, body) for target, status, body in sent}
    exchanges = first + second + rest
    assert skipped_then["skipped_requests"] > 0, "the paused reader should have made the kernel shed"
    assert stats["skipped_requests"] == stats["skipped_responses"] == skipped_then["skipped_requests"]
    assert len(exchanges) + stats["skipped_requests"] == len(sent) == 1540, stats
    assert stats["drops"] == stats["gaps"] == stats["lost_requests"] == stats["orphan_responses"] == 0, stats
    targets = [ex.request.target for ex in exchanges]
    assert len(set(targets)) == len(targets)
    for ex in exchanges:                      # complete, and each response is its own request's
        assert not ex.flags or (side == "server" and {f.name for f in ex.flags} <= {"NOT_VISIBLE"}), ex.flags
        status, body = answers[ex.request.target]
        assert ex.response is not None and ex.response.status == status == 200
        if side == "client":
            assert ex.response.body == body.encode() == f"GET {ex.request.target}\n".encode()
    # After the catch-up every request of the second burst was captured.
    assert sorted(ex.request.target for ex in second) == sorted(target for target, _, _ in sent[1500:])
