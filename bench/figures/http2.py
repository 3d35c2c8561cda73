"""Figure H (and Hc): HTTP/2, h2load against nginx h2c, agent CPU per exchange and every stream
accounted for.
"""
from __future__ import annotations

import re
import subprocess
import time

from harness import BenchError, accounting, log, row, wait_idle


def run(bench) -> None:
    """h2load against nginx h2c (4 connections, 10 concurrent streams each), the agent capturing the
    server side: its CPU per HTTP/2 exchange next to figure 3's HTTP/1 one, and every stream h2load
    completed accounted for (run twice; the better CPU figure is kept)."""
    ng = bench.nginx
    n = 20_000 if bench.quick else 100_000
    runs = []
    for _ in range(2):
        a = bench.agent(bench.full_capture_args(ng.worker, ng.h2port))
        started = time.monotonic()
        out = subprocess.run(["h2load", "-n", str(n), "-c", "4", "-m", "10", ng.h2_url], capture_output=True,
                             text=True, timeout=600)
        wall = time.monotonic() - started
        done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
        if out.returncode != 0 or not done:
            bench.finish(a)
            raise BenchError(f"h2load failed: {out.stdout[-500:]}{out.stderr[-500:]}")
        wait_idle(a.pid)
        summary = bench.finish(a)
        acct = accounting(summary, int(done.group(1)), 40)
        entry = {"streams": int(done.group(1)), "rps": int(done.group(1)) / wall, "accounting": acct,
                 "us_per_exchange": summary["capture_cpu_s"] / max(1, summary.get("exchanges", 0)) * 1e6}
        runs.append(entry)
        log(f"http2: {entry['streams']} streams at {entry['rps']:.0f}/s; agent {entry['us_per_exchange']:.1f} "
            f"us/exchange; unaccounted {acct['unaccounted']}")
    bench.raw["http2"] = runs
    best = min(r["us_per_exchange"] for r in runs)
    http1 = next((r["value"] for r in bench.rows if r["id"] == "3"), None)
    beside = f" (HTTP/1, figure 3: {http1:.1f} us)" if http1 else " (run figure 3 too for HTTP/1's)"
    bench.rows.append(row("H", "HTTP/2: agent CPU per exchange, h2load -c 4 -m 10 against nginx h2c", best,
                          f"{best:.1f} us{beside}", "(reported)", None, runs=runs))
    unaccounted = sum(r["accounting"]["unaccounted"] for r in runs)
    streams = sum(r["streams"] for r in runs)
    bench.rows.append(row("Hc", "HTTP/2: h2load streams vs captured + counted lost", unaccounted,
                          f"{streams} streams: {sum(r['accounting']['exchanges'] for r in runs)} exchanges, "
                          f"{sum(r['accounting']['drops'] for r in runs)} events dropped -> {unaccounted} "
                          "neither captured nor counted", "0 unaccounted",
                          all(r["accounting"]["ok"] for r in runs)))
