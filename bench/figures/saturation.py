"""Figures 1-3 (and 7b): nginx saturated by wrk -c50, untraced runs interleaved with hooks-alone and
full-capture runs of both program families (fast and compat), compared within the run.
"""
from __future__ import annotations

import collections
import statistics

from harness import accounting, free_port, log, noise, row, wait_idle, wrk


def run(bench) -> None:
    """U H F h f U H F h f U ... : untraced, hooks alone (unused port), full capture (server side), with
    the fast programs (H F) and the compat ones (h f: --programs compat, the family of kernels before
    5.17), side by side in one run.

    Besides requests/s, each run measures the CPU the load itself cost per request (nginx worker +
    wrk, where the BPF programs' time is charged): on a shared machine, other processes steal whole
    seconds from a run and move req/s a lot, CPU per request much less.  The throughput ratio is
    the figure; the CPU ratio is printed next to it as the cross-check."""
    ng = bench.nginx
    unused = free_port()
    rounds = 2 if bench.quick else 3
    schedule = ["U"] + ["H", "F", "h", "f", "U"] * rounds
    family_args = {"H": [], "F": [], "h": ["--programs", "compat"], "f": ["--programs", "compat"]}
    runs = collections.defaultdict(list)
    wrk(ng.url, 1)   # warm-up
    for kind in schedule:
        n0 = noise()
        a = None
        if kind in "Hh":
            a = bench.agent(["--port", str(unused), "--format", "json", "-o", "/dev/null", *family_args[kind]])
        elif kind in "Ff":
            a = bench.agent(bench.full_capture_args(ng.worker, ng.port) + family_args[kind])
        cpu0 = a.cpu() if a else 0.0
        w = wrk(ng.url, bench.run_s, server_pid=ng.worker)
        entry = {"wrk": w, "noise": n0}
        if a:
            entry["agent_cpu_during_load_s"] = a.cpu() - cpu0
            entry["lag_s"] = wait_idle(a.pid)
            entry["agent"] = bench.finish(a)
            entry["accounting"] = accounting(entry["agent"], w["requests"], w["connections"])
        runs[kind].append(entry)
        log(f"saturation {kind}: {w['rps']:.0f} req/s p99 {w['p99_ms']:.2f} ms, load CPU "
            f"{w['load_cpu_us_per_request']:.1f} us/req (loadavg {n0['loadavg']:.1f})"
            + (f"; agent exchanges={entry['agent'].get('exchanges')} drops={entry['agent'].get('drops')}"
               f" cpu={entry['agent']['capture_cpu_s']:.2f}s lag={entry['lag_s']:.2f}s" if a else ""))
    bench.raw["saturation"] = runs

    def mean(kind, key):
        return statistics.mean(r["wrk"][key] for r in runs[kind])

    def spread(kind):
        return [round(r["wrk"]["rps"]) for r in runs[kind]]

    def cores(kind):   # CPU the load (wrk + nginx) got per second of run
        return statistics.mean((r["wrk"]["wrk_cpu_s"] + r["wrk"]["server_cpu_s"]) / r["wrk"]["duration_s"]
                               for r in runs[kind])

    _saturation_rows(bench, runs, mean, spread, cores, "H", "F", "", "")
    _saturation_rows(bench, runs, mean, spread, cores, "h", "f", "c", "[compat] ")
    peaks = [round(r["agent"]["ru_maxrss_mb"]) for r in runs["F"]]
    bench.rows.append(row("7b", "Memory under overload: agent peak RSS in the figure-2 runs", max(peaks),
                          f"{max(peaks)} MiB (runs: {peaks}); the backlog is decoded in batches of <= 4096 events",
                          "(reported)", None, peaks=peaks))

def _saturation_rows(bench, runs, mean, spread, cores, hooks: str, full: str, suffix: str, label: str) -> None:
    """Figures 1-3 of one program family: its hooks-alone and full-capture runs against the untraced."""
    H, F = hooks, full
    u_rps, h_rps, f_rps = mean("U", "rps"), mean(H, "rps"), mean(F, "rps")
    u_cost, h_cost, f_cost = (mean(k, "load_cpu_us_per_request") for k in ("U", H, F))
    u_p99, f_p99 = mean("U", "p99_ms"), mean(F, "p99_ms")
    ratio_h = h_rps / u_rps
    contended = cores(H) < 0.85 * cores("U")
    bench.rows.append(row("1" + suffix, label + "Hooks alone (unused --port): throughput ratio", ratio_h,
                          f"{ratio_h:.3f} ({h_rps:.0f} vs {u_rps:.0f} req/s); CPU per request ratio "
                          f"{u_cost / h_cost:.3f}" + (f" [CONTENDED: the load got {cores(H):.2f} cores traced vs "
                                                     f"{cores('U'):.2f} untraced; trust the CPU ratio]"
                                                     if contended else ""),
                          ">= 0.95", ratio_h >= 0.95, untraced_rps=spread("U"), hooks_rps=spread(H),
                          cpu_ratio=u_cost / h_cost, load_cpu_us_per_request={"U": u_cost, "H": h_cost},
                          load_cores={"U": cores("U"), "H": cores(H)}, contended=contended))
    accts = [r["accounting"] for r in runs[F]]
    exch = sum(x["exchanges"] for x in accts)
    agent_cpu = sum(r["agent"]["capture_cpu_s"] for r in runs[F])
    agent_us = agent_cpu / max(1, exch) * 1e6
    ratio_f = f_rps / u_rps
    bench.rows.append(row("2a" + suffix, label + "Full capture at saturation (server side, --pid worker): throughput ratio",
                          ratio_f, f"{ratio_f:.3f} ({f_rps:.0f} vs {u_rps:.0f} req/s; CPU per request ratio "
                          f"{u_cost / (f_cost + agent_us):.3f} with the agent's CPU, {u_cost / f_cost:.3f} without)",
                          ">= 0.80", ratio_f >= 0.80, untraced_rps=spread("U"), traced_rps=spread(F),
                          load_cpu_us_per_request={"U": u_cost, "F": f_cost, "agent": agent_us},
                          load_cores={"U": cores("U"), "F": cores(F)}))
    p99_ratio = f_p99 / u_p99
    bench.rows.append(row("2b" + suffix, label + "Full capture: p99 latency traced / untraced", p99_ratio,
                          f"{p99_ratio:.2f}x ({f_p99:.2f} vs {u_p99:.2f} ms)", "(reported)", None))
    ok = all(x["ok"] for x in accts)
    load = sum(x["load_requests"] for x in accts)
    unacc = sum(x["unaccounted"] for x in accts)
    drops = sum(x["drops"] for x in accts)
    skipped = sum(x["skipped_requests"] for x in accts)
    bench.rows.append(row("2c" + suffix, label + "Full capture: wrk requests vs captured + dropped", unacc,
                          f"{load} requests: {exch} exchanges ({sum(x['complete'] for x in accts)} complete), "
                          + (f"{skipped} skipped whole, " if skipped else "")
                          + f"{sum(x['lost_requests'] for x in accts)} counted lost, {drops} events dropped -> "
                          f"{unacc} neither captured nor counted", "0 unaccounted", ok, runs=accts))
    lags = [round(r["lag_s"], 1) for r in runs[F]]
    bench.rows.append(row("3" + suffix, label + "Agent CPU per exchange (saturation, small exchanges, json output)", agent_us,
                          f"{agent_us:.1f} us ({agent_cpu:.2f} CPU s / {exch} exchanges; backlog drained "
                          f"{lags} s after the load)", "<= 10 us", agent_us <= 10,
                          start_cpu_s=[r["agent"]["start_cpu_s"] for r in runs[F]],
                          agent_cpu_share_during_load=[round(r["agent_cpu_during_load_s"] / r["wrk"]["duration_s"], 2)
                                                      for r in runs[F]], lag_s=lags))
