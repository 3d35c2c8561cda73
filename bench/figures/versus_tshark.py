"""Figure 8: the same exchanges captured by tcpdump (then converted by tshark) and by httptrace, in one
run: the CPU ratio.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

from harness import BenchError, ab, log, row, wait4, wait_idle


def run(bench) -> None:
    ng = bench.nginx
    n = 5000 if bench.quick else 20_000
    pcap = os.path.join(bench.workdir, "lo.pcap")
    jsonl = os.path.join(bench.workdir, "httptrace.jsonl")
    tshark_json = os.path.join(bench.workdir, "tshark.json")
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "65536", "-w", pcap,
                                f"tcp port {ng.port}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    a = None
    try:
        if not _wait_stderr(tcpdump, "listening on", 20):
            raise BenchError("tcpdump did not start")
        a = bench.agent(bench.full_capture_args(ng.worker, ng.port, output=jsonl))
        r = ab(ng.url, n, 50)
        time.sleep(0.5)
        tcpdump.send_signal(signal.SIGINT)
        td = wait4(tcpdump, 30)
        td_err = tcpdump.stderr.read()
        wait_idle(a.pid)
        s = bench.finish(a)
        a = None
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
            tcpdump.wait()
        if a is not None:
            bench.finish(a)
    captured = re.search(r"(\d+) packets captured", td_err)
    dropped = re.search(r"(\d+) packets dropped by kernel", td_err)
    with open(tshark_json, "w") as out:
        ts = subprocess.Popen(["tshark", "-r", pcap, "-n", "-d", f"tcp.port=={ng.port},http", "-Y", "http",
                               "-T", "json"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE)
        ts_ru = wait4(ts, 600)
    responses = requests = 0
    with open(tshark_json) as f:
        for line in f:
            if '"http.response.code":' in line:
                responses += 1
            elif '"http.request.method":' in line:
                requests += 1
    with open(jsonl) as f:
        lines = sum(1 for _ in f)
    side_a = td["cpu_s"] + ts_ru["cpu_s"]
    side_b = s["ru_cpu_s"]
    ratio = side_a / side_b
    ratio_capture = side_a / s["capture_cpu_s"]
    detail = {
        "exchanges": n, "ab": r,
        "tcpdump": {**td, "packets": int(captured.group(1)) if captured else None,
                    "dropped": int(dropped.group(1)) if dropped else None},
        "tshark": {**ts_ru, "responses": responses, "requests": requests,
                   "json_mb": os.path.getsize(tshark_json) / 1e6},
        "httptrace": {"cpu_s": side_b, "capture_cpu_s": s["capture_cpu_s"], "start_cpu_s": s["start_cpu_s"],
                      "maxrss_mb": s["ru_maxrss_mb"], "lines": lines, "exchanges": s.get("exchanges"),
                      "drops": s.get("drops"), "json_mb": os.path.getsize(jsonl) / 1e6},
        "cpu_ratio_including_start": ratio, "cpu_ratio_capture_only": ratio_capture,
        "us_per_exchange": {"tcpdump+tshark": side_a / n * 1e6, "httptrace": side_b / n * 1e6},
    }
    bench.raw["versus_tshark"] = detail
    log(f"vs tshark: tcpdump {td['cpu_s']:.2f}s + tshark {ts_ru['cpu_s']:.2f}s "
        f"({responses} responses) vs httptrace {side_b:.2f}s ({lines} lines)")
    bench.rows.append(row(
        "8", f"vs tcpdump + tshark, {n} exchanges: CPU ratio", ratio,
        f"{ratio:.1f}x less CPU ({side_a:.2f} s vs {side_b:.2f} s incl. start-up; {ratio_capture:.1f}x "
        f"capture only); peak RSS tcpdump {td['maxrss_mb']:.0f} + tshark {ts_ru['maxrss_mb']:.0f} vs "
        f"{s['ru_maxrss_mb']:.0f} MiB; exchanges {responses} vs {lines}",
        ">= 10x", ratio >= 10, **detail))


def _wait_stderr(proc: subprocess.Popen, text: str, timeout: float) -> bool:
    box = []

    def read():
        for line in proc.stderr:
            if text in line:
                box.append(line)
                return
    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    return bool(box)
