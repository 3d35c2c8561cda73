"""Figure 7: the agent's RSS with thousands of idle keep-alive connections tracked, then over two
batches of exchanges at a rate it holds (peak, and flat over the second batch).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time

from harness import HERE, PY, BenchError, log, row, wait_idle, write_lua, wrk


def run(bench) -> None:
    """RSS of the agent (server side of nginx) with N idle keep-alive connections open, then after two
    batches of exchanges: peak (VmHWM) against the goal, the second batch's growth for flatness.
    RssFile is mostly the ring buffer, which libbpf maps twice (2 x 32 MiB by default); RssAnon is
    the Python heap."""
    ng = bench.nginx
    idle_n = 2000 if bench.quick else 10_000
    n_exch = 20_000 if bench.quick else 100_000
    a = bench.agent(bench.full_capture_args(ng.worker, ng.port))
    points = {"attached": a.mem()}
    client = subprocess.Popen([PY, os.path.join(HERE, "idle_conns.py"), str(ng.port), str(idle_n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    conns_seen = None
    counts = {}
    try:
        line = _readline(client, 120)
        if not line.startswith("ready"):
            raise BenchError(f"idle client: {line!r}")
        wait_idle(a.pid)
        time.sleep(0.5)
        points[f"{idle_n} idle connections"] = a.mem()
        summary = a.usr1_summary()
        counts = {"idle": summary.get("exchanges")}
        conns_seen = summary.get("connections_open", summary.get("connections"))
        # Exchanges at a rate the agent holds (throttled wrk, as in figure 4), in 5 s chunks until the
        # agent has seen n_exch more: memory in steady state, not the backlog of an overload
        # (that one is figure 7b).
        delay_script = write_lua(bench.workdir, "delay1ms.lua", "function delay() return 1 end\n")
        done = summary.get("exchanges", 0)
        for i in (1, 2):
            target = done + n_exch
            while done < target:
                wrk(ng.url, 5, conns=10, script=delay_script)
                wait_idle(a.pid)
                done = a.usr1_summary().get("exchanges", done)
            points[f"+{i * n_exch} exchanges"] = a.mem()
            counts[f"+{i * n_exch} exchanges"] = done
            log(f"memory: {done} exchanges; agent RSS {points[f'+{i * n_exch} exchanges']['VmRSS']:.1f} MiB")
    finally:
        client.stdin.close()
        try:
            client.wait(30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
    wait_idle(a.pid)
    points["idle connections closed"] = a.mem()
    peak = a.mem()["VmHWM"]
    s = bench.finish(a)
    keys = list(points)
    rss = {k: v["VmRSS"] for k, v in points.items()}
    anon = {k: v.get("RssAnon") for k, v in points.items()}
    growth = rss[keys[3]] - rss[keys[2]]   # second batch of exchanges vs the first
    flat = growth <= 10
    bench.raw["memory"] = {"points_mib": points, "exchanges_at": counts, "peak_mib": peak,
                         "connections_seen": conns_seen, "agent": s}
    log("memory: " + ", ".join(f"{k}: {rss[k]:.1f} (anon {anon[k]:.1f})" for k in keys) + f" MiB; peak {peak:.1f}")
    bench.rows.append(row(
        "7", f"Memory: agent RSS, {idle_n} idle keep-alive conns + 2x{n_exch} exchanges", peak,
        f"peak {peak:.0f} MiB; {rss[keys[1]]:.0f} MiB with idle conns ({conns_seen} tracked; heap "
        f"{anon[keys[1]]:.0f}, ring mapping {points[keys[1]].get('RssFile', 0):.0f}); {rss[keys[2]]:.0f} -> "
        f"{rss[keys[3]]:.0f} MiB over the 2nd {n_exch} ({'flat' if flat else 'GROWS'})",
        "<= 150 MB, flat", peak <= 150 and flat, rss_mib=rss, anon_mib=anon))


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise BenchError("timed out waiting for the idle-connection client")
    return box[0].strip()
