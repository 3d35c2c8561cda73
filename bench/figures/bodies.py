"""Figure 5 and 5b: 10 MB response bodies, from the seed server (5) and from nginx's write() of a
10 MiB file (5b): MB/s captured with zero loss.
"""
from __future__ import annotations

import statistics

from harness import BODY_SIZE, accounting, log, row, wait_idle, write_lua, wrk


def run(bench) -> None:
    seed = bench.seed
    post = write_lua(bench.workdir, "post10m.lua",
                     'wrk.method = "POST"\n'
                     f'wrk.body = \'{{"size": {BODY_SIZE}}}\'\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
    seconds = 4 if bench.quick else 8
    conns = 2
    runs = {"U": [], "T": []}
    for kind in ("U", "T", "U"):
        a = bench.agent(bench.full_capture_args(seed.pid, seed.port)) if kind == "T" else None
        cpu0 = a.cpu() if a else 0
        w = wrk(seed.url, seconds, conns=conns, script=post)
        entry = {"wrk": w, "mb_s": w["read_bytes"] / w["duration_s"] / 1e6}
        if a:
            entry["agent_cpu_share"] = (a.cpu() - cpu0) / w["duration_s"]
            entry["lag_s"] = wait_idle(a.pid)
            s = entry["agent"] = bench.finish(a)
            entry["accounting"] = accounting(s, w["requests"], conns)
            entry["captured_mb_s"] = s.get("bytes", 0) / w["duration_s"] / 1e6
            entry["cpu_s_per_gb"] = s["capture_cpu_s"] / max(1, s.get("bytes", 0)) * 1e9
        runs[kind].append(entry)
        log(f"bodies {kind}: {w['requests']} x 10 MB responses, {entry['mb_s']:.0f} MB/s on the wire"
            + (f", captured {entry['captured_mb_s']:.0f} MB/s, drops={s.get('drops')} gaps={s.get('gaps')} "
               f"truncated={s.get('truncated')}" if a else ""))
    bench.raw["bodies_seed"] = runs
    t = runs["T"][0]
    s = t["agent"]
    lossless = (t["accounting"]["ok"] and s.get("drops", 0) == 0 and s.get("gaps", 0) == 0
                and s.get("truncated", 0) == 0 and s.get("bodies_cut", 0) == 0)
    u_mb = statistics.mean(r["mb_s"] for r in runs["U"])
    value = t["captured_mb_s"] if lossless else 0.0
    ceiling = 1000 / t["cpu_s_per_gb"] if t["cpu_s_per_gb"] else 0
    bench.rows.append(row(
        "5", "Bodies: seed 10 MB responses, MB/s captured with zero loss", value,
        f"{t['captured_mb_s']:.0f} MB/s{'' if lossless else ' WITH LOSS'} (seed untraced {u_mb:.0f} MB/s; "
        f"agent {t['cpu_s_per_gb']:.2f} CPU s/GB -> ceiling ~{ceiling:.0f} MB/s)",
        ">= 1000 MB/s", lossless and value >= 1000, lossless=lossless, untraced_mb_s=u_mb,
        traced_wire_mb_s=t["mb_s"], agent_cpu_share=t["agent_cpu_share"], lag_s=t["lag_s"],
        accounting=t["accounting"]))

    # 5b: the same agent against a server that is not the bottleneck (nginx, 10 MiB file, write()).
    ng = bench.nginx
    a = bench.agent(bench.full_capture_args(ng.worker, ng.port))
    cpu0 = a.cpu()
    w = wrk(ng.body_url, seconds, conns=1)
    share = (a.cpu() - cpu0) / w["duration_s"]
    lag = wait_idle(a.pid)
    s = bench.finish(a)
    acct = accounting(s, w["requests"], 1)
    mb = s.get("bytes", 0) / w["duration_s"] / 1e6
    lossless = acct["ok"] and s.get("drops", 0) == 0 and s.get("gaps", 0) == 0 and s.get("truncated", 0) == 0
    wire = w["read_bytes"] / w["duration_s"] / 1e6
    log(f"bodies nginx: {w['requests']} x 10 MiB, wire {wire:.0f} MB/s, captured {mb:.0f} MB/s, "
        f"drops={s.get('drops')} gaps={s.get('gaps')} lag={lag:.2f}s")
    bench.raw["bodies_nginx"] = {"wrk": w, "agent": s, "accounting": acct, "lag_s": lag, "agent_cpu_share": share}
    bench.rows.append(row(
        "5b", "Bodies: nginx 10 MiB file (write()), full speed", mb,
        f"{mb:.0f} MB/s captured of {wire:.0f} MB/s on the wire, {'no loss' if lossless else 'WITH LOSS'} "
        f"(drops={s.get('drops', 0)} gaps={s.get('gaps', 0)}, lag {lag:.1f}s)",
        "(reported)", None, lossless=lossless, agent_cpu_share=share,
        cpu_s_per_gb=s["capture_cpu_s"] / max(1, s.get("bytes", 0)) * 1e9))
