#!/usr/bin/env python3
"""httptrace benchmarks (`make bench`): each figure a ratio or a rate measured within one run.

    python bench/run.py                  # everything, ~5-8 minutes; table on stdout, bench/results.json
    python bench/run.py --only 1,2,6     # some figures
    python bench/run.py --quick          # shorter loads, for trying the harness (numbers are rougher)
    python bench/run.py --profile        # also py-spy the agent under saturating load (figure 3)

Set-up: nginx (bench/nginx.conf.template: 1 worker, `return 200` on /hello), the seed server
(tests/e2e/servers/seed, built with `go build`), wrk / ab as load, all on loopback.  The agent is the
real CLI (`python -m httptrace ... --format json -o /dev/null`) in a child process; its CPU comes from
wait4()'s rusage (and /proc/PID/stat while it runs), its counts from the summary line it prints on
stderr at exit.  Untraced and traced runs are interleaved (U T U T U...) and a traced figure is compared
with the mean of the untraced runs of the same session, because the machine is shared and drifts.

This file is the driver: it picks the steps, runs each figure module (bench/figures/<step>.py, a
run(bench) function that appends rows), and writes the table and results.json.  What the figures
share (agent, wrk, ab, nginx, seed, accounting) is bench/harness.py; the table and Markdown are
bench/report.py.

Every load is bounded in count or time and targets 127.0.0.1 only.  A goal that is missed is printed as
"NOT REACHED" with the number; the table is printed even when a figure fails with an error.
See docs/benchmarks.md for what each figure means.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
import traceback

from figures import (bodies, capacity, exports, half_load, http2, memory, overload, parser, profile, saturation, startup,
                     versus_tshark)
from harness import HERE, ROOT, Bench, Nginx, Seed, foreign_bpf_programs, log, noise
from report import code_label, machine, markdown, print_table, sort_rows

# Step name (the key of results.json's raw.step_seconds) -> the module that runs it.
STEPS = {"saturation": saturation, "capacity": capacity, "bodies": bodies, "startup": startup, "memory": memory,
         "versus_tshark": versus_tshark, "exports": exports, "http2": http2, "half_load": half_load,
         "overload": overload, "parser_bench": parser, "profile": profile}

STEP_IDS = {"http2": "H", "saturation": "1-3", "capacity": "4", "bodies": "5", "startup": "6", "memory": "7",
            "versus_tshark": "8", "exports": "9", "half_load": "10", "overload": "11", "parser_bench": "P",
            "profile": "prof"}

FIGURES = {
    "1": "saturation", "2": "saturation", "3": "saturation", "4": "capacity", "5": "bodies",
    "6": "startup", "7": "memory", "8": "versus_tshark", "9": "exports", "10": "half_load", "11": "overload",
    "H": "http2", "P": "parser_bench",
}


def selftest() -> int:
    """Checks of the harness's own parsing that need no root and no load."""
    overload.selftest()
    print("bench/run.py --selftest: ok")
    return 0


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--only", help="comma list of figures: 1-11, H (HTTP/2), P (parser bench)")
    cli.add_argument("--quick", action="store_true", help="shorter loads (rougher numbers)")
    cli.add_argument("--profile", action="store_true", help="py-spy the agent under saturation")
    cli.add_argument("--out", default=os.path.join(HERE, "results.json"))
    cli.add_argument("--markdown", metavar="RESULTS_JSON", help="print a results file's table as Markdown, then exit")
    cli.add_argument("--selftest", action="store_true", help="check the harness's parsing (no root, no load), then exit")
    opts = cli.parse_args()
    if opts.selftest:
        return selftest()
    if opts.markdown:
        print(markdown(opts.markdown))
        return 0
    if os.geteuid() != 0:
        print("bench/run.py: needs root (the agent loads BPF programs)", file=sys.stderr)
        return 2
    for tool in ("nginx", "wrk", "ab", "tcpdump", "tshark", "go", "h2load"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"bench/run.py: {tool} is missing (make bench installs it)", file=sys.stderr)
            return 2
    wanted = opts.only.split(",") if opts.only else list(FIGURES)
    steps = []
    for fid in wanted:
        step = FIGURES.get(fid.strip())
        if step is None:
            cli.error(f"unknown figure {fid!r}")
        if step not in steps:
            steps.append(step)
    if opts.profile:
        steps.append("profile")

    started = time.monotonic()
    bench = Bench(opts)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "quick": opts.quick, "noise_start": noise()}
    try:
        meta["code"] = bench.snapshot()
        bench.nginx = Nginx(bench.workdir)
        if "bodies" in steps:
            bench.seed = Seed(bench.workdir)
        for step in steps:
            log(f"--- {step} (load {os.getloadavg()[0]:.2f}, foreign BPF programs {foreign_bpf_programs()})")
            t0 = time.monotonic()
            try:
                STEPS[step].run(bench)
            except Exception as exc:   # one broken figure must not hide the others
                traceback.print_exc()
                bench.rows.append({"id": STEP_IDS.get(step, step), "figure": step, "value": None, "display": f"error: {exc}"[:200],
                                   "goal": "", "pass": False, "error": True, "detail": {}})
            bench.raw.setdefault("step_seconds", {})[step] = round(time.monotonic() - t0, 1)
    finally:
        bench.cleanup()
    meta["noise_end"] = noise()
    meta["seconds"] = round(time.monotonic() - started, 1)
    sort_rows(bench.rows)
    with open(opts.out, "w") as f:
        json.dump({**meta, "figures": bench.rows, "raw": bench.raw}, f, indent=1, default=str)
    print()
    print(f"httptrace benchmarks {meta['date']}  ({meta['machine']['nproc']} CPUs {meta['machine']['cpu']}, "
          f"Linux {meta['machine']['kernel']}; {meta['seconds']:.0f} s; load avg "
          f"{meta['noise_start']['loadavg']:.2f} -> {meta['noise_end']['loadavg']:.2f}; code {code_label(meta)})")
    print_table(bench.rows)
    print(f"\nwritten: {os.path.relpath(opts.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
