"""Opens N keep-alive connections to 127.0.0.1:PORT, sends one GET on each, reads the responses,
then holds them idle until stdin closes.  Used by bench/figures/memory.py for figure 7 (agent memory).

Usage: python bench/idle_conns.py PORT N [PATH]
Prints "ready <open connections>" on stdout once every connection has had its exchange.
"""
from __future__ import annotations

import resource
import socket
import sys

BATCH = 200


def main() -> int:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else "/hello"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    conns: list[socket.socket] = []
    while len(conns) < count:
        batch = []
        for _ in range(min(BATCH, count - len(conns))):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            batch.append(s)
        for s in batch:
            s.sendall(request)
        for s in batch:
            got = b""
            while b"\r\n\r\n" not in got:   # /hello's body is in the same segment as its headers
                chunk = s.recv(4096)
                if not chunk:
                    raise SystemExit("server closed a connection")
                got += chunk
        conns.extend(batch)
    print(f"ready {len(conns)}", flush=True)
    sys.stdin.read()   # hold the connections until the benchmark closes our stdin
    for s in conns:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
