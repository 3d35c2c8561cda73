"""Figure 6: start-up, exec of the CLI to the `attached` event (all hooks attached), median.
"""
from __future__ import annotations

import statistics

from harness import BenchError, free_port, row


def run(bench) -> None:
    unused = free_port()
    walls, own, ready = [], [], []
    for _ in range(3 if bench.quick else 5):
        a = bench.agent(["--port", str(unused), "--format", "json", "-o", "/dev/null"])
        if a.t_attached is None:
            raise BenchError(f"no 'attached' event: {a.stderr_tail()}")
        walls.append(a.t_attached - a.t0)
        own.append(float(a.attached.get("seconds", "nan")))
        ready.append(a.t_started - a.t0)
        bench.finish(a)
    wall = statistics.median(walls)
    bench.raw["startup"] = {"exec_to_attached_s": walls, "tracer_start_s": own, "exec_to_capture_started_s": ready}
    bench.rows.append(row("6", "Start-up: exec -> all hooks attached (median)", wall,
                          f"{wall:.3f} s (Tracer.start() alone {statistics.median(own):.3f} s)", "<= 0.3 s",
                          wall <= 0.3, runs=[round(x, 3) for x in walls]))
