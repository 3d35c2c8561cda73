"""--profile: py-spy samples of the agent at a rate it holds; raw collapsed stacks to bench/profile.txt,
the top functions (self and inclusive) to the log and results.json.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import time

from harness import HERE, PY, BenchError, log, wait_idle, write_lua, wrk


def run(bench) -> None:
    """py-spy samples of the agent at a rate it holds; raw collapsed stacks go to bench/profile.txt."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
    if not os.path.exists(spy):
        raise BenchError("py-spy is not installed (pip install py-spy into the venv)")
    ng = bench.nginx
    raw = os.path.join(HERE, "profile.txt")
    a = bench.agent(bench.full_capture_args(ng.worker, ng.port))
    seconds = 3 if bench.quick else 8
    spy_proc = subprocess.Popen([spy, "record", "-p", str(a.pid), "-r", "250", "-d", str(seconds + 1),
                                 "-f", "raw", "-o", raw, "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    # A rate the agent holds (as in figure 4): at saturation one ring_buffer__poll() decodes the
    # whole backlog for longer than the sampling window, and output never shows in the profile.
    delay_script = write_lua(bench.workdir, "delay1ms.lua", "function delay() return 1 end\n")
    w = wrk(ng.url, seconds, conns=20, script=delay_script)
    spy_proc.wait(60)
    wait_idle(a.pid)
    s = bench.finish(a)
    top_self, top_incl, total = summarize_collapsed(raw)
    bench.raw["profile"] = {"file": raw, "samples": total, "exchanges": s.get("exchanges"), "wrk_rps": w["rps"],
                            "self": top_self, "inclusive": top_incl}
    log(f"profile: {total} samples at {w['rps']:.0f} exchanges/s -> {raw}")
    for name, n in top_incl[:25]:
        log(f"  inclusive {100 * n / max(1, total):5.1f}%  {name}")
    for name, n in top_self[:15]:
        log(f"  self      {100 * n / max(1, total):5.1f}%  {name}")


def summarize_collapsed(path: str, top: int = 25):
    """py-spy raw (collapsed) stacks -> top functions by self and by inclusive samples."""
    self_counts, incl_counts = collections.Counter(), collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [_frame_name(fr) for fr in stack.split(";")]
            self_counts[frames[-1]] += n
            for fr in set(frames):
                incl_counts[fr] += n
    return self_counts.most_common(top), incl_counts.most_common(top), total


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"; keep lines out so a function sums up.
    m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    return f"{m.group(1)} ({os.path.basename(m.group(2))})"
