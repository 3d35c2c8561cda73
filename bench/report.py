"""The bench's output: the machine it ran on, the table on stdout, and a results file's table as
Markdown (`bench/run.py --markdown results.json`, for docs/benchmarks.md).
"""
from __future__ import annotations

import json
import os
import platform

from harness import PAGE

# Row order of the table: a figure's rows stay together whatever order the steps ran in.
ROW_ORDER = ["1-3", "1", "1c", "2a", "2ac", "2b", "2bc", "2c", "2cc", "3", "3c", "H", "Hc", "4", "5", "5b", "6", "7", "7b",
             "8", "9a", "9b", "10", "10a", "10b", "10c", "10d", "11", "P", "prof"]


def sort_rows(rows: list[dict]) -> None:
    order = {k: i for i, k in enumerate(ROW_ORDER)}
    rows.sort(key=lambda r: order.get(r["id"], 99))


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PHYS_PAGES") * PAGE / (1 << 30)
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": model, "mem_gib": round(mem_gib, 1),
            "python": platform.python_version()}


def print_table(rows: list[dict]) -> None:
    header = ("#", "figure", "value", "goal", "result")
    cells = []
    for r in rows:
        if r.get("error"):
            result = "ERROR"
        elif r["pass"] is None:
            result = "info"
        else:
            result = "pass" if r["pass"] else "NOT REACHED"
        cells.append((r["id"], r["figure"], r["display"], r["goal"], result))
    widths = [max(len(str(c[i])) for c in cells + [header]) for i in range(5)]
    widths[2] = min(widths[2], 110)
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print(line.format(*c))


def code_label(meta: dict) -> str:
    code = meta.get("code", {})
    label = code.get("git_head", "?")
    if code.get("uncommitted_files"):
        label += f" + {code['uncommitted_files']} uncommitted files"
    return f"{label}, snapshot {code.get('sha256', '?')}"


def markdown(results_path: str) -> str:
    """The table of a results.json as Markdown, for docs/benchmarks.md."""
    with open(results_path) as f:
        results = json.load(f)
    m = results["machine"]
    out = [f"Run of {results['date']} on {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}, "
           f"Python {m['python']}; {results['seconds']:.0f} s; load average "
           f"{results['noise_start']['loadavg']:.2f} at the start, {results['noise_end']['loadavg']:.2f} at the end"
           f"{'; --quick' if results.get('quick') else ''}; code {code_label(results)}.", "",
           "| # | figure | value | goal | result |", "|---|---|---|---|---|"]
    for r in results["figures"]:
        result = ("ERROR" if r.get("error") else "info" if r["pass"] is None
                  else "pass" if r["pass"] else "**not reached**")
        cells = [r["id"], r["figure"], r["display"], r["goal"], result]
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)
