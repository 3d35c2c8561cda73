#!/usr/bin/env python3
"""Go crypto/tls under load: wrk against a Go HTTPS server (tests/e2e/servers/gotls, HTTP/1.1) for
N seconds untraced, then N seconds with the agent's uprobes on its Write/Read (the real CLI, --pid of the
server, JSON to /dev/null).

    python bench/gotls_bench.py                   # 10 s per run, the default and external-linked PIE builds
    python bench/gotls_bench.py --seconds 3 --variants default,stripped,pie,extpie

Pass/fail: under the probes, every request wrk made is served without error (no socket errors, no
non-2xx), the server is still running afterwards, and the agent emitted one exchange per request (wrk
cuts its last in-flight requests: up to one per connection more). Prints rates for the record.
Loopback only; each load is bounded by --seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from harness import Agent, BenchError, free_port, wrk  # noqa: E402  (bench/harness.py)
from tests.gobuild import VARIANTS, build  # noqa: E402

CONNECTIONS = 50


def probed(agent: Agent, binary: str) -> bool:
    for _, line in agent.lines:
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "probing Go crypto/tls" and event.get("path") == binary:
                return True
    return False


def run_variant(name: str, binary: str, seconds: float) -> dict:
    port = free_port()
    server = subprocess.Popen([binary, "serve", f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        assert server.stdout.readline() == b"listening\n"
        url = f"https://127.0.0.1:{port}/hello"
        wrk(url, 1, conns=CONNECTIONS)   # warm-up
        untraced = wrk(url, seconds, conns=CONNECTIONS, server_pid=server.pid)
        agent = Agent(["--pid", str(server.pid), "--port", str(port), "--format", "json", "-o", os.devnull])
        try:
            deadline = time.monotonic() + 30
            while not probed(agent, binary) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not probed(agent, binary):
                raise BenchError(f"{binary} was not probed: {agent.stderr_tail()}")
            traced = wrk(url, seconds, conns=CONNECTIONS, server_pid=server.pid)
            time.sleep(1)   # the agent drains its ring buffer
        finally:
            summary = agent.stop()
        alive = server.poll() is None
    finally:
        server.kill()
        server.wait()
    exchanges = summary.get("exchanges", 0)
    ok = (alive and traced["socket_errors"] == 0 and traced["non_2xx"] == 0
          and traced["requests"] <= exchanges <= traced["requests"] + CONNECTIONS
          and summary.get("go_tls_bad_fd", 0) == 0 and summary.get("drops", 0) == 0)
    return {"variant": name, "ok": ok, "server_alive": alive,
            "untraced_rps": round(untraced["rps"]), "traced_rps": round(traced["rps"]),
            "traced_vs_untraced": round(traced["rps"] / untraced["rps"], 2),
            "requests": traced["requests"], "exchanges": exchanges,
            "socket_errors": traced["socket_errors"], "non_2xx": traced["non_2xx"],
            "p99_ms": traced["p99_ms"], "agent_cpu_s": round(summary.get("capture_cpu_s", 0), 2),
            "drops": summary.get("drops"), "go_tls_bad_fd": summary.get("go_tls_bad_fd", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--variants", default="default,extpie")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="gotls-bench") as tmp:
        for name in args.variants.split(","):
            cgo, flags = VARIANTS[name]
            results.append(run_variant(name, build(tmp, name, cgo, flags), args.seconds))
            print(json.dumps(results[-1]), flush=True)
    print(f"{sum(r['ok'] for r in results)}/{len(results)} Go TLS load runs served every request without error")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
