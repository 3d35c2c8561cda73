"""Figure 9: agent CPU per exchange with --metrics (9a) and with --otlp-endpoint (9b), next to plain
JSON output, at a rate the agent holds.
"""
from __future__ import annotations

import threading

from harness import free_port, log, row, wait_idle, write_lua, wrk


def run(bench) -> None:
    """Agent CPU per exchange with --metrics, and with --otlp-endpoint, next to plain JSON output, at a
    rate the agent holds (throttled wrk, as in figure 4); the three interleaved, twice each."""
    ng = bench.nginx
    delay_script = write_lua(bench.workdir, "delay1ms.lua", "function delay() return 1 end\n")
    seconds = 2 if bench.quick else 4
    sink = OtlpSink()
    configs = {"json": lambda: [], "metrics": lambda: ["--metrics", f"127.0.0.1:{free_port()}"],
               "otlp": lambda: ["--otlp-endpoint", sink.url]}
    runs: dict[str, list] = {name: [] for name in configs}
    try:
        for _ in range(2):
            for name, extra in configs.items():
                a = bench.agent(bench.full_capture_args(ng.worker, ng.port) + extra())
                w = wrk(ng.url, seconds, conns=20, script=delay_script)
                wait_idle(a.pid)
                summary = bench.finish(a)
                exchanges = max(1, summary.get("exchanges", 0))
                entry = {"rps": w["rps"], "exchanges": summary.get("exchanges", 0),
                         "us_per_exchange": summary["capture_cpu_s"] / exchanges * 1e6,
                         "otlp_spans": summary.get("otlp_spans", 0), "otlp_dropped": summary.get("otlp_dropped", 0)}
                runs[name].append(entry)
                log(f"exports {name}: {w['rps']:.0f}/s {entry['us_per_exchange']:.1f} us/exchange"
                    + (f" spans={entry['otlp_spans']} dropped={entry['otlp_dropped']}" if name == "otlp" else ""))
    finally:
        sink.close()
    bench.raw["exports"] = {"runs": runs, "otlp_posts": sink.posts, "otlp_bytes": sink.bytes}
    best = {name: min(r["us_per_exchange"] for r in entries) for name, entries in runs.items()}
    for fid, name, flag in (("9a", "metrics", "--metrics"), ("9b", "otlp", "--otlp-endpoint")):
        ratio = best[name] / max(1e-9, best["json"])
        display = f"{best[name]:.1f} us/exchange (plain JSON {best['json']:.1f} us: x{ratio:.2f})"
        if name == "otlp":
            spans = sum(r["otlp_spans"] for r in runs[name])
            exchanged = sum(r["exchanges"] for r in runs[name])
            dropped = sum(r["otlp_dropped"] for r in runs[name])
            display += f"; {spans}/{exchanged} spans delivered, {dropped} dropped"
        bench.rows.append(row(fid, f"Agent CPU per exchange with {flag}, JSON output too", best[name], display,
                              "reported", None, ratio=round(ratio, 3), runs=runs[name]))


class OtlpSink:
    """An OTLP/HTTP endpoint for figure 9: reads each export, counts its bytes, answers 200 (no decoding:
    the figure is the agent's cost, not the receiver's)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.posts = 0
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.posts += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
