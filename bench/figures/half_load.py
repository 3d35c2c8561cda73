"""Figure 10: nginx at a fixed 50% of its untraced saturation rate, untraced against full capture (agent
on the worker, JSON to /dev/null): what a production server at ordinary load notices of the tracer.

The rate is set by wrk's Lua delay() (Debian's wrk 4.1 has no -R): a think time before each request on
a moderate number of connections, calibrated in this run against the untraced saturation rate measured
in this run.  wrk starts a request's latency clock after its delay, so the latencies are the server's
(plus loopback and wrk), not the think time.  Runs alternate U F U F ... U and each number is a median;
an untraced run more than 5% off the target re-aims the delay for the next pair (the machine drifts).
"""
from __future__ import annotations

import statistics

from harness import log, row, wait_idle, write_lua, wrk

CONNECTIONS = 32   # moderate; more connections would mean longer think times, fewer a burstier 0/1 ms mix
SHARE = 0.5   # of the untraced saturation rate
TOLERANCE = 0.05   # calibration stops when the rate is within 5% of the target


def _delay_script(workdir: str, mean_ms: float, n: int) -> str:
    """A delay() whose mean is `mean_ms`: wrk takes whole milliseconds (the number is cast to an
    integer), so each request waits floor(mean) or floor(mean) + 1 ms with the odds that give the mean."""
    whole = int(mean_ms)
    return write_lua(workdir, f"half_load_delay{n}.lua",
                     f"local whole, frac = {whole}, {mean_ms - whole:.4f}\n"
                     "function delay()\n"
                     "  if math.random() < frac then return whole + 1 end\n"
                     "  return whole\n"
                     "end\n")


def _calibrate(bench, target: float, seconds: int) -> tuple[str, float, list[dict]]:
    """Mean think time for `target` req/s on CONNECTIONS connections.  A connection's cycle is think
    time + the rest (service, loopback, wrk, scheduling), so the rate is CONNECTIONS / cycle: each step
    estimates "the rest" (median of the steps so far: one noisy run must not throw the next guess far)
    and aims the cycle at CONNECTIONS / target.  The rate falls as the think time grows, so the delays
    tried bracket the answer; a guess outside the bracket is replaced by its midpoint.  If no step lands
    within TOLERANCE, the closest one is used (the runs' rates are shown in the rows anyway)."""
    ng = bench.nginx
    want_cycle_ms = CONNECTIONS / target * 1e3
    mean_ms = want_cycle_ms * 0.8   # at half load the rest is well under a fifth of the cycle
    too_fast, too_slow = 0.0, None   # largest delay known to give more than the target, smallest less
    rests: list[float] = []
    steps = []
    for _ in range(6):
        script = _delay_script(bench.workdir, mean_ms, len(steps))
        rps = wrk(ng.url, seconds, conns=CONNECTIONS, script=script)["rps"]
        steps.append({"delay_ms": round(mean_ms, 4), "rps": rps, "script": script})
        log(f"half load: calibrating, delay {mean_ms:.3f} ms -> {rps:.0f} req/s (target {target:.0f})")
        if abs(rps / target - 1) <= TOLERANCE:
            break
        if rps > target:
            too_fast = max(too_fast, mean_ms)
        else:
            too_slow = mean_ms if too_slow is None else min(too_slow, mean_ms)
        rests.append(CONNECTIONS / max(1.0, rps) * 1e3 - mean_ms)
        guess = want_cycle_ms - statistics.median(rests)
        if too_slow is None:
            mean_ms = guess if guess > too_fast else too_fast * 1.5 + 0.1
        else:
            mean_ms = guess if too_fast < guess < too_slow else (too_fast + too_slow) / 2
    best = min(steps, key=lambda s: abs(s["rps"] / target - 1))
    return best.pop("script"), best["delay_ms"], [{k: v for k, v in s.items() if k != "script"} for s in steps]


def run(bench) -> None:
    ng = bench.nginx
    wrk(ng.url, 1)   # warm-up
    saturation = [wrk(ng.url, bench.run_s, server_pid=ng.worker)["rps"] for _ in range(1 if bench.quick else 2)]
    target = SHARE * statistics.mean(saturation)
    script, mean_ms, steps = _calibrate(bench, target, 2 if bench.quick else 3)   # wrk takes whole seconds
    schedule = ["U", "F"] * (2 if bench.quick else 4) + ["U"]
    runs: dict[str, list[dict]] = {"U": [], "F": []}
    delays = []
    for i, kind in enumerate(schedule):
        a = bench.agent(bench.full_capture_args(ng.worker, ng.port)) if kind == "F" else None
        w = wrk(ng.url, bench.run_s, conns=CONNECTIONS, script=script, server_pid=ng.worker)
        delays.append(mean_ms)
        entry = {"rps": w["rps"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"], "requests": w["requests"],
                 "delay_ms": round(mean_ms, 4),
                 "nginx_us_per_request": w["server_cpu_s"] / max(1, w["requests"]) * 1e6,
                 "socket_errors": w["socket_errors"]}
        if a:
            entry["lag_s"] = wait_idle(a.pid)
            s = bench.finish(a)
            entry.update(exchanges=s.get("exchanges", 0), drops=s.get("drops", 0),
                         agent_us_per_exchange=s["capture_cpu_s"] / max(1, s.get("exchanges", 0)) * 1e6)
        runs[kind].append(entry)
        log(f"half load {kind}: {w['rps']:.0f} req/s p50 {w['p50_ms']:.3f} ms p99 {w['p99_ms']:.3f} ms, nginx "
            f"{entry['nginx_us_per_request']:.1f} us/req" + (f"; agent {entry['agent_us_per_exchange']:.1f} us/exchange, "
                                                           f"drops={entry['drops']}" if a else ""))
        if kind == "U" and i + 1 < len(schedule) and abs(w["rps"] / target - 1) > TOLERANCE:
            # The shared machine drifts: re-aim the next pair (its F run gets the same delay as its U),
            # halfway, so that one noisy run does not swing the load.
            rest = CONNECTIONS / max(1.0, w["rps"]) * 1e3 - mean_ms
            mean_ms = (mean_ms + max(0.0, CONNECTIONS / target * 1e3 - rest)) / 2
            script = _delay_script(bench.workdir, mean_ms, 100 + i)
    bench.raw["half_load"] = {"saturation_rps": saturation, "target_rps": target, "connections": CONNECTIONS,
                              "delay_ms": delays, "calibration": steps, "runs": runs}

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    u_rps, f_rps = median("U", "rps"), median("F", "rps")
    rate = (f"at {u_rps:.0f} / {f_rps:.0f} req/s untraced / traced, target {target:.0f} = 50% of "
            f"{statistics.mean(saturation):.0f} untraced saturation; -c{CONNECTIONS}, delay "
            f"{min(delays):.2f}-{max(delays):.2f} ms")
    if min(u_rps, f_rps) < (1 - 2 * TOLERANCE) * target or max(u_rps, f_rps) > (1 + 2 * TOLERANCE) * target:
        rate += " [OFF TARGET by more than 10%]"
    medians = {k: {key: median(k, key) for key in ("rps", "p50_ms", "p99_ms", "nginx_us_per_request")} for k in runs}
    p50 = medians["F"]["p50_ms"] / medians["U"]["p50_ms"]
    p99 = medians["F"]["p99_ms"] / medians["U"]["p99_ms"]
    cpu = medians["F"]["nginx_us_per_request"] / medians["U"]["nginx_us_per_request"]
    agent_us = median("F", "agent_us_per_exchange")
    bench.rows.append(row("10a", "50% load, full capture: p50 latency traced / untraced (medians)", p50,
                          f"{p50:.2f}x ({medians['F']['p50_ms']:.3f} vs {medians['U']['p50_ms']:.3f} ms) {rate}",
                          "(reported)", None, medians=medians))
    bench.rows.append(row("10b", "50% load, full capture: p99 latency traced / untraced (medians)", p99,
                          f"{p99:.2f}x ({medians['F']['p99_ms']:.3f} vs {medians['U']['p99_ms']:.3f} ms)",
                          "<= 1.10x", p99 <= 1.10, runs={k: [r["p99_ms"] for r in v] for k, v in runs.items()}))
    bench.rows.append(row("10c", "50% load, full capture: nginx CPU per request traced / untraced (medians)", cpu,
                          f"{cpu:.2f}x ({medians['F']['nginx_us_per_request']:.1f} vs "
                          f"{medians['U']['nginx_us_per_request']:.1f} us)", "<= 1.10x", cpu <= 1.10,
                          runs={k: [round(r["nginx_us_per_request"], 2) for r in v] for k, v in runs.items()}))
    drops = sum(r["drops"] for r in runs["F"])
    bench.rows.append(row("10d", "50% load, full capture: agent CPU per exchange (median)", agent_us,
                          f"{agent_us:.1f} us ({drops} events dropped; backlog drained "
                          f"{[round(r['lag_s'], 1) for r in runs['F']]} s after the load)", "(reported)", None,
                          runs=[round(r["agent_us_per_exchange"], 1) for r in runs["F"]]))
