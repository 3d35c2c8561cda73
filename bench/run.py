#!/usr/bin/env python3
"""httptrace benchmarks (`make bench`): nine figures, each a ratio or a rate measured within one run.

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

Every load is bounded in count or time and targets 127.0.0.1 only.  A goal that is missed is printed as
"NOT REACHED" with the number; the table is printed even when a figure fails with an error.
See docs/benchmarks.md for what each figure means.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SEED_DIR = os.path.join(ROOT, "tests", "e2e", "servers", "seed")
BODY_SIZE = 10 * 1024 * 1024


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ------------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """utime + stime of a live process, seconds (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS), RssAnon (heap) and RssFile (the ring buffer mapping is here) in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def wait4(proc: subprocess.Popen, timeout: float) -> dict:
    """Reap `proc` ourselves to get its rusage; SIGKILL it after `timeout`."""
    deadline = time.monotonic() + timeout
    killed = False
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return {"cpu_s": ru.ru_utime + ru.ru_stime, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                    "maxrss_mb": ru.ru_maxrss / 1024, "returncode": proc.returncode, "killed": killed,
                    "voluntary_switches": ru.ru_nvcsw, "involuntary_switches": ru.ru_nivcsw}
        if time.monotonic() > deadline and not killed:
            proc.kill()
            killed = True
            deadline = time.monotonic() + 10
        elif killed and time.monotonic() > deadline:
            raise BenchError(f"pid {proc.pid} does not die")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"nothing listening on 127.0.0.1:{port}")


def wait_idle(pid: int, timeout: float = 60.0, window: float = 0.2) -> float:
    """Seconds until `pid` stops using CPU (at most one clock tick in a `window`): the agent's lag
    behind the load once the load has stopped.  Returns `timeout` if it never settles."""
    start = time.monotonic()
    last = proc_cpu(pid)
    while time.monotonic() - start < timeout:
        t = time.monotonic()
        time.sleep(window)
        now = proc_cpu(pid)
        if now - last <= 1.0 / CLK_TCK + 1e-9:
            return t - start
        last = now
    return timeout


# ---- the agent ------------------------------------------------------------------------------------

_SUMMARY = re.compile(r"(\w+)=(\S+)")


AGENT_CWD = ROOT   # Bench points this at its snapshot of httptrace/ (see Bench.snapshot)


class Agent:
    """`python -m httptrace ARGS` in a child process; stderr is collected (time-stamped) by a thread."""

    def __init__(self, args: list[str], start_timeout: float = 60.0, python: list[str] | None = None):
        self.args = args
        self.lines: list[tuple[float, str]] = []
        self.attached: dict | None = None
        self.t_attached: float | None = None
        self.t_started: float | None = None
        self._started = threading.Event()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([*(python or [PY, "-m", "httptrace"]), *args], cwd=AGENT_CWD, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     errors="replace")
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._started.wait(start_timeout):
            self.proc.kill()
            self.proc.wait()
            raise BenchError(f"agent did not start in {start_timeout}s: {self.stderr_tail()}")
        if self.proc.poll() is not None:
            raise BenchError(f"agent exited at start ({self.proc.returncode}): {self.stderr_tail()}")
        # The CLI installs its SIGINT handler just after logging "capture started", and a stop() that
        # lands before Tracer.exchanges() starts iterating is lost (seen: the agent then runs on), so
        # give it a moment before anything can signal it.
        time.sleep(0.25)
        self.cpu_at_start = proc_cpu(self.pid)
        self.mem_at_start = proc_mem(self.pid)
        self.rusage: dict = {}
        self.summary: dict = {}

    def _read(self) -> None:
        for line in self.proc.stderr:
            t = time.monotonic()
            line = line.rstrip("\n")
            self.lines.append((t, line))
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "attached" and self.attached is None:
                    self.attached, self.t_attached = event, t
                elif event.get("event") == "capture started":
                    self.t_started = t
                    self._started.set()
        self._started.set()   # EOF: exited (the constructor checks)

    def stderr_tail(self, n: int = 8) -> str:
        return " | ".join(line for _, line in self.lines[-n:])

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def mem(self) -> dict[str, float]:
        return proc_mem(self.pid)

    def usr1_summary(self, timeout: float = 5.0) -> dict:
        """Ask for the summary line without stopping (SIGUSR1)."""
        n = len(self.lines)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, line in self.lines[n:]:
                if line.startswith("httptrace summary:"):
                    return _parse_summary(line)
            time.sleep(0.02)
        return {}

    def stop(self, timeout: float = 120.0) -> dict:
        """SIGINT, reap, parse the exit summary; returns the summary with rusage fields added."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.rusage = wait4(self.proc, timeout)
        self._reader.join(10)
        for _, line in reversed(self.lines):
            if line.startswith("httptrace summary:"):
                self.summary = _parse_summary(line)
                break
        else:
            raise BenchError(f"agent printed no summary (rc={self.rusage['returncode']}): {self.stderr_tail()}")
        self.summary["capture_cpu_s"] = self.rusage["cpu_s"] - self.cpu_at_start
        self.summary["start_cpu_s"] = self.cpu_at_start
        self.summary.update({f"ru_{k}": v for k, v in self.rusage.items()})
        return self.summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass


def _parse_summary(line: str) -> dict:
    out = {}
    for key, value in _SUMMARY.findall(line.split(":", 1)[1]):
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value.rstrip("s"))
            except ValueError:
                out[key] = value
    return out


def accounting(summary: dict, requests: int, in_flight: int) -> dict:
    """Every exchange the load completed must be an emitted exchange (complete or flagged) or a request
    the reassembler knows it lost.  The server may also have seen up to `in_flight` requests the load
    generator gave up on when it stopped (they are captured, possibly flagged incomplete)."""
    exchanges = summary.get("exchanges", 0)
    seen = exchanges + summary.get("lost_requests", 0)
    return {
        "load_requests": requests,
        "exchanges": exchanges,
        "complete": exchanges - summary.get("incomplete", 0),
        "incomplete": summary.get("incomplete", 0),
        "lost_requests": summary.get("lost_requests", 0),
        "drops": summary.get("drops", 0),
        "gaps": summary.get("gaps", 0),
        "unaccounted": max(0, requests - seen),
        "extra": seen - requests,   # in flight when the load stopped; must be <= in_flight
        "ok": requests <= seen <= requests + in_flight,
    }


# ---- load generators ------------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def wrk(url: str, seconds: float, conns: int = 50, threads: int = 1, script: str | None = None,
        server_pid: int | None = None) -> dict:
    """One wrk run.  Also measures the CPU the load cost: wrk's own (rusage) and, with server_pid, the
    server's (/proc), so a run gives CPU per request as well as requests per second."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", script]
    server0 = proc_cpu(server_pid) if server_pid else 0.0
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd + [url], stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        ru = wait4(proc, seconds + 60)
        out.seek(0)
        err.seek(0)
        text, errors_text = out.read(), err.read()
    wall = time.monotonic() - t0
    server_cpu = proc_cpu(server_pid) - server0 if server_pid else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),\s+([\d.]+)(B|KB|MB|GB) read", text)
    if ru["returncode"] != 0 or not m:
        raise BenchError(f"wrk failed ({ru['returncode']}): {text[-500:]} {errors_text[-500:]}")
    scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    result = {"requests": int(m.group(1)), "duration_s": _seconds(m.group(2), m.group(3)),
              "read_bytes": float(m.group(4)) * scale[m.group(5)], "wall_s": wall, "connections": conns,
              "wrk_cpu_s": ru["cpu_s"], "server_cpu_s": server_cpu}
    result["rps"] = result["requests"] / result["duration_s"]
    if server_cpu is not None and result["requests"]:
        result["load_cpu_us_per_request"] = (ru["cpu_s"] + server_cpu) / result["requests"] * 1e6
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)", text, re.M)
    result["p99_ms"] = _seconds(p99.group(1), p99.group(2)) * 1e3 if p99 else None
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    result["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def ab(url: str, n: int, conns: int) -> dict:
    cmd = ["ab", "-q", "-k", "-n", str(n), "-c", str(conns), url]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    done = re.search(r"Complete requests:\s+(\d+)", out.stdout)
    failed = re.search(r"Failed requests:\s+(\d+)", out.stdout)
    rps = re.search(r"Requests per second:\s+([\d.]+)", out.stdout)
    if out.returncode != 0 or not done:
        raise BenchError(f"ab failed ({out.returncode}): {out.stdout[-400:]} {out.stderr[-400:]}")
    return {"requests": int(done.group(1)), "failed": int(failed.group(1)) if failed else 0,
            "rps": float(rps.group(1)) if rps else n / wall, "wall_s": wall}


# ---- servers --------------------------------------------------------------------------------------

class Nginx:
    def __init__(self, workdir: str):
        self.dir = os.path.join(workdir, "nginx")
        for sub in ("www", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.port, self.h2port = free_port(), free_port()
        with open(os.path.join(HERE, "nginx.conf.template")) as f:
            conf = string.Template(f.read()).safe_substitute(dir=self.dir, port=self.port, h2port=self.h2port)
        conf_path = os.path.join(self.dir, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        # A 10 MiB body of letters (UTF-8 text, like the seed's), served with write() from user memory.
        table = bytes((b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")[i % 62] for i in range(256))
        with open(os.path.join(self.dir, "www", "10m.txt"), "wb") as f:
            f.write(os.urandom(BODY_SIZE).translate(table))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-c", conf_path, "-e", os.path.join(self.dir, "error.log")],
                                     stdin=subprocess.DEVNULL)
        wait_for_port(self.port)
        deadline = time.monotonic() + 10
        while not children(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = children(self.proc.pid)
        if len(workers) != 1:
            raise BenchError(f"expected one nginx worker, found {workers}")
        self.worker = workers[0]
        self.url = f"http://127.0.0.1:{self.port}/hello"
        self.h2_url = f"http://127.0.0.1:{self.h2port}/hello"
        self.body_url = f"http://127.0.0.1:{self.port}/copied/10m.txt"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Seed:
    def __init__(self, workdir: str):
        binary = os.path.join(workdir, "seed-server")
        env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off", CGO_ENABLED="0")
        out = subprocess.run(["go", "build", "-o", binary, "."], cwd=SEED_DIR, env=env, capture_output=True,
                             text=True, timeout=300)
        if out.returncode != 0:
            raise BenchError(f"go build of the seed server failed: {out.stderr[-500:]}")
        self.port = free_port()
        self.proc = subprocess.Popen([binary, "-addr", f"127.0.0.1:{self.port}"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        wait_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}/customResponse"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def write_lua(workdir: str, name: str, text: str) -> str:
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# ---- the noise we cannot remove -------------------------------------------------------------------

def foreign_bpf_programs() -> int | None:
    """Tracing programs loaded by someone else right now (other engineers' test runs): noise."""
    if not shutil.which("bpftool"):
        return None
    try:
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=10)
        progs = json.loads(out.stdout or "[]")
    except (subprocess.SubprocessError, ValueError):
        return None
    return sum(1 for p in progs if p.get("type") in ("tracepoint", "kprobe", "raw_tracepoint", "tracing"))


def noise() -> dict:
    return {"loadavg": os.getloadavg()[0], "foreign_bpf": foreign_bpf_programs()}


# ---- figures --------------------------------------------------------------------------------------

def row(fid: str, figure: str, value, display: str, goal: str, ok: bool | None, **detail) -> dict:
    return {"id": fid, "figure": figure, "value": value, "display": display, "goal": goal, "pass": ok,
            "detail": detail}


class Bench:
    def __init__(self, opts):
        self.opts = opts
        self.quick = opts.quick
        self.run_s = 2 if opts.quick else 5
        self.workdir = tempfile.mkdtemp(prefix="httptrace-bench-")
        self.nginx: Nginx | None = None
        self.seed: Seed | None = None
        self.rows: list[dict] = []
        self.raw: dict = {}
        self.agents: list[Agent] = []

    # -- helpers --

    def snapshot(self) -> dict:
        """Copy httptrace/ (with its built .so and .bpf.o) and run the agent from the copy: other people
        rebuild the tree while benchmarks run, and one run must measure one version of the code."""
        global AGENT_CWD
        snap = os.path.join(self.workdir, "snapshot")
        shutil.copytree(os.path.join(ROOT, "httptrace"), os.path.join(snap, "httptrace"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        AGENT_CWD = snap
        info = {"path": snap}
        try:
            info["git_head"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                              text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "httptrace", "bpf"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10).stdout.split("\n")
            info["uncommitted_files"] = len([line for line in dirty if line.strip()])
        except (OSError, subprocess.SubprocessError):
            pass
        digest = hashlib.sha256()
        for base, dirs, files in sorted(os.walk(os.path.join(snap, "httptrace"))):
            dirs.sort()
            for name in sorted(files):
                with open(os.path.join(base, name), "rb") as f:
                    digest.update(name.encode() + f.read())
        info["sha256"] = digest.hexdigest()[:16]
        return info

    def agent(self, args: list[str]) -> Agent:
        a = Agent(args)
        self.agents.append(a)
        return a

    def full_capture_args(self, pid: int, port: int, output: str = "/dev/null") -> list[str]:
        return ["--pid", str(pid), "--port", str(port), "--format", "json", "-o", output]

    def finish(self, a: Agent) -> dict:
        try:
            return a.stop()
        finally:
            if a in self.agents:
                self.agents.remove(a)

    def cleanup(self) -> None:
        for a in list(self.agents):
            a.kill()
        for server in (self.nginx, self.seed):
            if server is not None:
                try:
                    server.stop()
                except Exception:
                    pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- figures 1, 2, 3: interleaved saturation runs --

    def saturation(self) -> None:
        """U H F h f U H F h f U ... : untraced, hooks alone (unused port), full capture (server side), with
        the fast programs (H F) and the compat ones (h f: --programs compat, the family of kernels before
        5.17), side by side in one run.

        Besides requests/s, each run measures the CPU the load itself cost per request (nginx worker +
        wrk, where the BPF programs' time is charged): on a shared machine, other processes steal whole
        seconds from a run and move req/s a lot, CPU per request much less.  The throughput ratio is
        the figure; the CPU ratio is printed next to it as the cross-check."""
        ng = self.nginx
        unused = free_port()
        rounds = 2 if self.quick else 3
        schedule = ["U"] + ["H", "F", "h", "f", "U"] * rounds
        family_args = {"H": [], "F": [], "h": ["--programs", "compat"], "f": ["--programs", "compat"]}
        runs = collections.defaultdict(list)
        wrk(ng.url, 1)   # warm-up
        for kind in schedule:
            n0 = noise()
            a = None
            if kind in "Hh":
                a = self.agent(["--port", str(unused), "--format", "json", "-o", "/dev/null", *family_args[kind]])
            elif kind in "Ff":
                a = self.agent(self.full_capture_args(ng.worker, ng.port) + family_args[kind])
            cpu0 = a.cpu() if a else 0.0
            w = wrk(ng.url, self.run_s, server_pid=ng.worker)
            entry = {"wrk": w, "noise": n0}
            if a:
                entry["agent_cpu_during_load_s"] = a.cpu() - cpu0
                entry["lag_s"] = wait_idle(a.pid)
                entry["agent"] = self.finish(a)
                entry["accounting"] = accounting(entry["agent"], w["requests"], w["connections"])
            runs[kind].append(entry)
            log(f"saturation {kind}: {w['rps']:.0f} req/s p99 {w['p99_ms']:.2f} ms, load CPU "
                f"{w['load_cpu_us_per_request']:.1f} us/req (loadavg {n0['loadavg']:.1f})"
                + (f"; agent exchanges={entry['agent'].get('exchanges')} drops={entry['agent'].get('drops')}"
                   f" cpu={entry['agent']['capture_cpu_s']:.2f}s lag={entry['lag_s']:.2f}s" if a else ""))
        self.raw["saturation"] = runs

        def mean(kind, key):
            return statistics.mean(r["wrk"][key] for r in runs[kind])

        def spread(kind):
            return [round(r["wrk"]["rps"]) for r in runs[kind]]

        def cores(kind):   # CPU the load (wrk + nginx) got per second of run
            return statistics.mean((r["wrk"]["wrk_cpu_s"] + r["wrk"]["server_cpu_s"]) / r["wrk"]["duration_s"]
                                   for r in runs[kind])

        self._saturation_rows(runs, mean, spread, cores, "H", "F", "", "")
        self._saturation_rows(runs, mean, spread, cores, "h", "f", "c", "[compat] ")
        peaks = [round(r["agent"]["ru_maxrss_mb"]) for r in runs["F"]]
        self.rows.append(row("7b", "Memory under overload: agent peak RSS in the figure-2 runs", max(peaks),
                             f"{max(peaks)} MiB (runs: {peaks}); the backlog is decoded in batches of <= 4096 events",
                             "(reported)", None, peaks=peaks))

    def _saturation_rows(self, runs, mean, spread, cores, hooks: str, full: str, suffix: str, label: str) -> None:
        """Figures 1-3 of one program family: its hooks-alone and full-capture runs against the untraced."""
        H, F = hooks, full
        u_rps, h_rps, f_rps = mean("U", "rps"), mean(H, "rps"), mean(F, "rps")
        u_cost, h_cost, f_cost = (mean(k, "load_cpu_us_per_request") for k in ("U", H, F))
        u_p99, f_p99 = mean("U", "p99_ms"), mean(F, "p99_ms")
        ratio_h = h_rps / u_rps
        contended = cores(H) < 0.85 * cores("U")
        self.rows.append(row("1" + suffix, label + "Hooks alone (unused --port): throughput ratio", ratio_h,
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
        self.rows.append(row("2a" + suffix, label + "Full capture at saturation (server side, --pid worker): throughput ratio",
                             ratio_f, f"{ratio_f:.3f} ({f_rps:.0f} vs {u_rps:.0f} req/s; CPU per request ratio "
                             f"{u_cost / (f_cost + agent_us):.3f} with the agent's CPU, {u_cost / f_cost:.3f} without)",
                             ">= 0.80", ratio_f >= 0.80, untraced_rps=spread("U"), traced_rps=spread(F),
                             load_cpu_us_per_request={"U": u_cost, "F": f_cost, "agent": agent_us},
                             load_cores={"U": cores("U"), "F": cores(F)}))
        p99_ratio = f_p99 / u_p99
        self.rows.append(row("2b" + suffix, label + "Full capture: p99 latency traced / untraced", p99_ratio,
                             f"{p99_ratio:.2f}x ({f_p99:.2f} vs {u_p99:.2f} ms)", "(reported)", None))
        ok = all(x["ok"] for x in accts)
        load = sum(x["load_requests"] for x in accts)
        unacc = sum(x["unaccounted"] for x in accts)
        drops = sum(x["drops"] for x in accts)
        self.rows.append(row("2c" + suffix, label + "Full capture: wrk requests vs captured + dropped", unacc,
                             f"{load} requests: {exch} exchanges ({sum(x['complete'] for x in accts)} complete), "
                             f"{sum(x['lost_requests'] for x in accts)} counted lost, {drops} events dropped -> "
                             f"{unacc} neither captured nor counted", "0 unaccounted", ok, runs=accts))
        lags = [round(r["lag_s"], 1) for r in runs[F]]
        self.rows.append(row("3" + suffix, label + "Agent CPU per exchange (saturation, small exchanges, json output)", agent_us,
                             f"{agent_us:.1f} us ({agent_cpu:.2f} CPU s / {exch} exchanges; backlog drained "
                             f"{lags} s after the load)", "<= 10 us", agent_us <= 10,
                             start_cpu_s=[r["agent"]["start_cpu_s"] for r in runs[F]],
                             agent_cpu_share_during_load=[round(r["agent_cpu_during_load_s"] / r["wrk"]["duration_s"], 2)
                                                          for r in runs[F]], lag_s=lags))

    # -- figure 4 --

    def capacity(self) -> None:
        """Throttled load, rising: the highest rate with zero drops, zero gaps, nothing unaccounted, and
        the agent keeping up (idle within 0.5 s of the load stopping)."""
        delay_script = write_lua(self.workdir, "delay1ms.lua", "function delay() return 1 end\n")
        levels = [5, 10, 20, 40] if self.quick else [5, 10, 20, 30, 40, 60, 80, 100, 130, 160, 200]
        seconds = 3 if self.quick else 4
        results = []
        best = None
        for conns in levels:
            for attempt in (1, 2):   # a level that fails is tried once more: the machine is shared
                entry = self._capacity_level(conns, seconds, delay_script)
                entry["attempt"] = attempt
                results.append(entry)
                if entry["held"]:
                    break
            if entry["held"]:
                best = entry if best is None or entry["rps"] > best["rps"] else best
            else:
                break
            held = [r for r in results if r["held"]]
            if len(held) >= 2 and held[-1]["rps"] < held[-2]["rps"] * 1.05:
                log("capacity: the load does not rise any more (load generator / CPU bound); stopping")
                break
        self.raw["capacity"] = results
        value = best["rps"] if best else 0.0
        limited = bool(results) and results[-1]["held"]
        display = f"{value:.0f} exchanges/s" + (" (load-limited: every level held)" if limited else "")
        self.rows.append(row("4", "Capacity: highest rate with 0 drops, 0 gaps, agent keeping up", value, display,
                             ">= 100000/s", value >= 100_000, levels=[
                                 {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                 for r in results]))

    def _capacity_level(self, conns: int, seconds: float, delay_script: str) -> dict:
        ng = self.nginx
        a = self.agent(self.full_capture_args(ng.worker, ng.port))
        cpu0 = a.cpu()
        w = wrk(ng.url, seconds, conns=conns, script=delay_script)
        cpu_load = a.cpu() - cpu0
        lag = wait_idle(a.pid)
        s = self.finish(a)
        acct = accounting(s, w["requests"], conns)
        held = acct["ok"] and acct["drops"] == 0 and acct["gaps"] == 0 and lag <= 0.5
        exchanges = max(1, s.get("exchanges", 0))
        entry = {"connections": conns, "rps": w["rps"], "p99_ms": w["p99_ms"], "lag_s": lag,
                 "agent_cpu_share": cpu_load / w["duration_s"],
                 "us_per_exchange": s["capture_cpu_s"] / exchanges * 1e6,
                 "sys_share": s["ru_sys_s"] / max(1e-9, s["ru_cpu_s"]),
                 "wakeups_per_exchange": s["ru_voluntary_switches"] / exchanges,
                 "drops": acct["drops"], "gaps": acct["gaps"], "unaccounted": acct["unaccounted"], "held": held}
        log(f"capacity c={conns}: {w['rps']:.0f}/s drops={acct['drops']} gaps={acct['gaps']} "
            f"unaccounted={acct['unaccounted']} lag={lag:.2f}s agent={entry['agent_cpu_share']:.2f} CPU "
            f"{entry['us_per_exchange']:.0f} us/exch {entry['wakeups_per_exchange']:.2f} wakeups/exch "
            f"-> {'held' if held else 'NOT held'}")
        return entry

    # -- figure 5 --

    def bodies(self) -> None:
        seed = self.seed
        post = write_lua(self.workdir, "post10m.lua",
                         'wrk.method = "POST"\n'
                         f'wrk.body = \'{{"size": {BODY_SIZE}}}\'\n'
                         'wrk.headers["Content-Type"] = "application/json"\n')
        seconds = 4 if self.quick else 8
        conns = 2
        runs = {"U": [], "T": []}
        for kind in ("U", "T", "U"):
            a = self.agent(self.full_capture_args(seed.pid, seed.port)) if kind == "T" else None
            cpu0 = a.cpu() if a else 0
            w = wrk(seed.url, seconds, conns=conns, script=post)
            entry = {"wrk": w, "mb_s": w["read_bytes"] / w["duration_s"] / 1e6}
            if a:
                entry["agent_cpu_share"] = (a.cpu() - cpu0) / w["duration_s"]
                entry["lag_s"] = wait_idle(a.pid)
                s = entry["agent"] = self.finish(a)
                entry["accounting"] = accounting(s, w["requests"], conns)
                entry["captured_mb_s"] = s.get("bytes", 0) / w["duration_s"] / 1e6
                entry["cpu_s_per_gb"] = s["capture_cpu_s"] / max(1, s.get("bytes", 0)) * 1e9
            runs[kind].append(entry)
            log(f"bodies {kind}: {w['requests']} x 10 MB responses, {entry['mb_s']:.0f} MB/s on the wire"
                + (f", captured {entry['captured_mb_s']:.0f} MB/s, drops={s.get('drops')} gaps={s.get('gaps')} "
                   f"truncated={s.get('truncated')}" if a else ""))
        self.raw["bodies_seed"] = runs
        t = runs["T"][0]
        s = t["agent"]
        lossless = (t["accounting"]["ok"] and s.get("drops", 0) == 0 and s.get("gaps", 0) == 0
                    and s.get("truncated", 0) == 0 and s.get("bodies_cut", 0) == 0)
        u_mb = statistics.mean(r["mb_s"] for r in runs["U"])
        value = t["captured_mb_s"] if lossless else 0.0
        ceiling = 1000 / t["cpu_s_per_gb"] if t["cpu_s_per_gb"] else 0
        self.rows.append(row(
            "5", "Bodies: seed 10 MB responses, MB/s captured with zero loss", value,
            f"{t['captured_mb_s']:.0f} MB/s{'' if lossless else ' WITH LOSS'} (seed untraced {u_mb:.0f} MB/s; "
            f"agent {t['cpu_s_per_gb']:.2f} CPU s/GB -> ceiling ~{ceiling:.0f} MB/s)",
            ">= 1000 MB/s", lossless and value >= 1000, lossless=lossless, untraced_mb_s=u_mb,
            traced_wire_mb_s=t["mb_s"], agent_cpu_share=t["agent_cpu_share"], lag_s=t["lag_s"],
            accounting=t["accounting"]))

        # 5b: the same agent against a server that is not the bottleneck (nginx, 10 MiB file, write()).
        ng = self.nginx
        a = self.agent(self.full_capture_args(ng.worker, ng.port))
        cpu0 = a.cpu()
        w = wrk(ng.body_url, seconds, conns=1)
        share = (a.cpu() - cpu0) / w["duration_s"]
        lag = wait_idle(a.pid)
        s = self.finish(a)
        acct = accounting(s, w["requests"], 1)
        mb = s.get("bytes", 0) / w["duration_s"] / 1e6
        lossless = acct["ok"] and s.get("drops", 0) == 0 and s.get("gaps", 0) == 0 and s.get("truncated", 0) == 0
        wire = w["read_bytes"] / w["duration_s"] / 1e6
        log(f"bodies nginx: {w['requests']} x 10 MiB, wire {wire:.0f} MB/s, captured {mb:.0f} MB/s, "
            f"drops={s.get('drops')} gaps={s.get('gaps')} lag={lag:.2f}s")
        self.raw["bodies_nginx"] = {"wrk": w, "agent": s, "accounting": acct, "lag_s": lag, "agent_cpu_share": share}
        self.rows.append(row(
            "5b", "Bodies: nginx 10 MiB file (write()), full speed", mb,
            f"{mb:.0f} MB/s captured of {wire:.0f} MB/s on the wire, {'no loss' if lossless else 'WITH LOSS'} "
            f"(drops={s.get('drops', 0)} gaps={s.get('gaps', 0)}, lag {lag:.1f}s)",
            "(reported)", None, lossless=lossless, agent_cpu_share=share,
            cpu_s_per_gb=s["capture_cpu_s"] / max(1, s.get("bytes", 0)) * 1e9))

    # -- figure 6 --

    def startup(self) -> None:
        unused = free_port()
        walls, own, ready = [], [], []
        for _ in range(3 if self.quick else 5):
            a = self.agent(["--port", str(unused), "--format", "json", "-o", "/dev/null"])
            if a.t_attached is None:
                raise BenchError(f"no 'attached' event: {a.stderr_tail()}")
            walls.append(a.t_attached - a.t0)
            own.append(float(a.attached.get("seconds", "nan")))
            ready.append(a.t_started - a.t0)
            self.finish(a)
        wall = statistics.median(walls)
        self.raw["startup"] = {"exec_to_attached_s": walls, "tracer_start_s": own, "exec_to_capture_started_s": ready}
        self.rows.append(row("6", "Start-up: exec -> all hooks attached (median)", wall,
                             f"{wall:.3f} s (Tracer.start() alone {statistics.median(own):.3f} s)", "<= 0.3 s",
                             wall <= 0.3, runs=[round(x, 3) for x in walls]))

    # -- figure 7 --

    def memory(self) -> None:
        """RSS of the agent (server side of nginx) with N idle keep-alive connections open, then after two
        batches of exchanges: peak (VmHWM) against the goal, the second batch's growth for flatness.
        RssFile is mostly the ring buffer, which libbpf maps twice (2 x 32 MiB by default); RssAnon is
        the Python heap."""
        ng = self.nginx
        idle_n = 2000 if self.quick else 10_000
        n_exch = 20_000 if self.quick else 100_000
        a = self.agent(self.full_capture_args(ng.worker, ng.port))
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
            delay_script = write_lua(self.workdir, "delay1ms.lua", "function delay() return 1 end\n")
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
        s = self.finish(a)
        keys = list(points)
        rss = {k: v["VmRSS"] for k, v in points.items()}
        anon = {k: v.get("RssAnon") for k, v in points.items()}
        growth = rss[keys[3]] - rss[keys[2]]   # second batch of exchanges vs the first
        flat = growth <= 10
        self.raw["memory"] = {"points_mib": points, "exchanges_at": counts, "peak_mib": peak,
                             "connections_seen": conns_seen, "agent": s}
        log("memory: " + ", ".join(f"{k}: {rss[k]:.1f} (anon {anon[k]:.1f})" for k in keys) + f" MiB; peak {peak:.1f}")
        self.rows.append(row(
            "7", f"Memory: agent RSS, {idle_n} idle keep-alive conns + 2x{n_exch} exchanges", peak,
            f"peak {peak:.0f} MiB; {rss[keys[1]]:.0f} MiB with idle conns ({conns_seen} tracked; heap "
            f"{anon[keys[1]]:.0f}, ring mapping {points[keys[1]].get('RssFile', 0):.0f}); {rss[keys[2]]:.0f} -> "
            f"{rss[keys[3]]:.0f} MiB over the 2nd {n_exch} ({'flat' if flat else 'GROWS'})",
            "<= 150 MB, flat", peak <= 150 and flat, rss_mib=rss, anon_mib=anon))

    # -- figure 9 --

    def exports(self) -> None:
        """Agent CPU per exchange with --metrics, and with --otlp-endpoint, next to plain JSON output, at a
        rate the agent holds (throttled wrk, as in figure 4); the three interleaved, twice each."""
        ng = self.nginx
        delay_script = write_lua(self.workdir, "delay1ms.lua", "function delay() return 1 end\n")
        seconds = 2 if self.quick else 4
        sink = OtlpSink()
        configs = {"json": lambda: [], "metrics": lambda: ["--metrics", f"127.0.0.1:{free_port()}"],
                   "otlp": lambda: ["--otlp-endpoint", sink.url]}
        runs: dict[str, list] = {name: [] for name in configs}
        try:
            for _ in range(2):
                for name, extra in configs.items():
                    a = self.agent(self.full_capture_args(ng.worker, ng.port) + extra())
                    w = wrk(ng.url, seconds, conns=20, script=delay_script)
                    wait_idle(a.pid)
                    summary = self.finish(a)
                    exchanges = max(1, summary.get("exchanges", 0))
                    entry = {"rps": w["rps"], "exchanges": summary.get("exchanges", 0),
                             "us_per_exchange": summary["capture_cpu_s"] / exchanges * 1e6,
                             "otlp_spans": summary.get("otlp_spans", 0), "otlp_dropped": summary.get("otlp_dropped", 0)}
                    runs[name].append(entry)
                    log(f"exports {name}: {w['rps']:.0f}/s {entry['us_per_exchange']:.1f} us/exchange"
                        + (f" spans={entry['otlp_spans']} dropped={entry['otlp_dropped']}" if name == "otlp" else ""))
        finally:
            sink.close()
        self.raw["exports"] = {"runs": runs, "otlp_posts": sink.posts, "otlp_bytes": sink.bytes}
        best = {name: min(r["us_per_exchange"] for r in entries) for name, entries in runs.items()}
        for fid, name, flag in (("9a", "metrics", "--metrics"), ("9b", "otlp", "--otlp-endpoint")):
            ratio = best[name] / max(1e-9, best["json"])
            display = f"{best[name]:.1f} us/exchange (plain JSON {best['json']:.1f} us: x{ratio:.2f})"
            if name == "otlp":
                spans = sum(r["otlp_spans"] for r in runs[name])
                exchanged = sum(r["exchanges"] for r in runs[name])
                dropped = sum(r["otlp_dropped"] for r in runs[name])
                display += f"; {spans}/{exchanged} spans delivered, {dropped} dropped"
            self.rows.append(row(fid, f"Agent CPU per exchange with {flag}, JSON output too", best[name], display,
                                 "reported", None, ratio=round(ratio, 3), runs=runs[name]))

    # -- figure H --

    def http2(self) -> None:
        """h2load against nginx h2c (4 connections, 10 concurrent streams each), the agent capturing the
        server side: its CPU per HTTP/2 exchange next to figure 3's HTTP/1 one, and every stream h2load
        completed accounted for (run twice; the better CPU figure is kept)."""
        ng = self.nginx
        n = 20_000 if self.quick else 100_000
        runs = []
        for _ in range(2):
            a = self.agent(self.full_capture_args(ng.worker, ng.h2port))
            started = time.monotonic()
            out = subprocess.run(["h2load", "-n", str(n), "-c", "4", "-m", "10", ng.h2_url], capture_output=True,
                                 text=True, timeout=600)
            wall = time.monotonic() - started
            done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out.stdout)
            if out.returncode != 0 or not done:
                self.finish(a)
                raise BenchError(f"h2load failed: {out.stdout[-500:]}{out.stderr[-500:]}")
            wait_idle(a.pid)
            summary = self.finish(a)
            acct = accounting(summary, int(done.group(1)), 40)
            entry = {"streams": int(done.group(1)), "rps": int(done.group(1)) / wall, "accounting": acct,
                     "us_per_exchange": summary["capture_cpu_s"] / max(1, summary.get("exchanges", 0)) * 1e6}
            runs.append(entry)
            log(f"http2: {entry['streams']} streams at {entry['rps']:.0f}/s; agent {entry['us_per_exchange']:.1f} "
                f"us/exchange; unaccounted {acct['unaccounted']}")
        self.raw["http2"] = runs
        best = min(r["us_per_exchange"] for r in runs)
        http1 = next((r["value"] for r in self.rows if r["id"] == "3"), None)
        beside = f" (HTTP/1, figure 3: {http1:.1f} us)" if http1 else " (run figure 3 too for HTTP/1's)"
        self.rows.append(row("H", "HTTP/2: agent CPU per exchange, h2load -c 4 -m 10 against nginx h2c", best,
                             f"{best:.1f} us{beside}", "(reported)", None, runs=runs))
        unaccounted = sum(r["accounting"]["unaccounted"] for r in runs)
        streams = sum(r["streams"] for r in runs)
        self.rows.append(row("Hc", "HTTP/2: h2load streams vs captured + counted lost", unaccounted,
                             f"{streams} streams: {sum(r['accounting']['exchanges'] for r in runs)} exchanges, "
                             f"{sum(r['accounting']['drops'] for r in runs)} events dropped -> {unaccounted} "
                             "neither captured nor counted", "0 unaccounted",
                             all(r["accounting"]["ok"] for r in runs)))

    # -- figure 8 --

    def versus_tshark(self) -> None:
        ng = self.nginx
        n = 5000 if self.quick else 20_000
        pcap = os.path.join(self.workdir, "lo.pcap")
        jsonl = os.path.join(self.workdir, "httptrace.jsonl")
        tshark_json = os.path.join(self.workdir, "tshark.json")
        tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-s", "0", "-B", "65536", "-w", pcap,
                                    f"tcp port {ng.port}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        a = None
        try:
            if not _wait_stderr(tcpdump, "listening on", 20):
                raise BenchError("tcpdump did not start")
            a = self.agent(self.full_capture_args(ng.worker, ng.port, output=jsonl))
            r = ab(ng.url, n, 50)
            time.sleep(0.5)
            tcpdump.send_signal(signal.SIGINT)
            td = wait4(tcpdump, 30)
            td_err = tcpdump.stderr.read()
            wait_idle(a.pid)
            s = self.finish(a)
            a = None
        finally:
            if tcpdump.poll() is None:
                tcpdump.kill()
                tcpdump.wait()
            if a is not None:
                self.finish(a)
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
        self.raw["versus_tshark"] = detail
        log(f"vs tshark: tcpdump {td['cpu_s']:.2f}s + tshark {ts_ru['cpu_s']:.2f}s "
            f"({responses} responses) vs httptrace {side_b:.2f}s ({lines} lines)")
        self.rows.append(row(
            "8", f"vs tcpdump + tshark, {n} exchanges: CPU ratio", ratio,
            f"{ratio:.1f}x less CPU ({side_a:.2f} s vs {side_b:.2f} s incl. start-up; {ratio_capture:.1f}x "
            f"capture only); peak RSS tcpdump {td['maxrss_mb']:.0f} + tshark {ts_ru['maxrss_mb']:.0f} vs "
            f"{s['ru_maxrss_mb']:.0f} MiB; exchanges {responses} vs {lines}",
            ">= 10x", ratio >= 10, **detail))

    # -- parser micro benchmark (another engineer's script), when present --

    def parser_bench(self) -> None:
        script = os.path.join(HERE, "parser_bench.py")
        if not os.path.exists(script):
            return
        out = subprocess.run([PY, script], cwd=ROOT, capture_output=True, text=True, timeout=300)
        text = out.stdout.strip()
        self.raw["parser_bench"] = {"returncode": out.returncode, "stdout": text[-4000:], "stderr": out.stderr[-2000:]}
        lines = text.splitlines()
        picked = [line for line in lines if "one event per message" in line][:1] + lines[-1:]
        display = "; ".join(re.sub(r"\s+", " ", line).strip() for line in picked) or f"exit {out.returncode}"
        self.rows.append(row("P", "Parser micro benchmark (bench/parser_bench.py, no kernel)", None,
                             display[:200], "(reported)", None if out.returncode == 0 else False))

    # -- profile (optional) --

    def profile(self) -> None:
        """py-spy samples of the agent at a rate it holds; raw collapsed stacks go to bench/profile.txt."""
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(PY), "py-spy")
        if not os.path.exists(spy):
            raise BenchError("py-spy is not installed (pip install py-spy into the venv)")
        ng = self.nginx
        raw = os.path.join(HERE, "profile.txt")
        a = self.agent(self.full_capture_args(ng.worker, ng.port))
        seconds = 3 if self.quick else 8
        spy_proc = subprocess.Popen([spy, "record", "-p", str(a.pid), "-r", "250", "-d", str(seconds + 1),
                                     "-f", "raw", "-o", raw, "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        # A rate the agent holds (as in figure 4): at saturation one ring_buffer__poll() decodes the
        # whole backlog for longer than the sampling window, and output never shows in the profile.
        delay_script = write_lua(self.workdir, "delay1ms.lua", "function delay() return 1 end\n")
        w = wrk(ng.url, seconds, conns=20, script=delay_script)
        spy_proc.wait(60)
        wait_idle(a.pid)
        s = self.finish(a)
        top_self, top_incl, total = summarize_collapsed(raw)
        self.raw["profile"] = {"file": raw, "samples": total, "exchanges": s.get("exchanges"), "wrk_rps": w["rps"],
                               "self": top_self, "inclusive": top_incl}
        log(f"profile: {total} samples at {w['rps']:.0f} exchanges/s -> {raw}")
        for name, n in top_incl[:25]:
            log(f"  inclusive {100 * n / max(1, total):5.1f}%  {name}")
        for name, n in top_self[:15]:
            log(f"  self      {100 * n / max(1, total):5.1f}%  {name}")


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


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise BenchError("timed out waiting for the idle-connection client")
    return box[0].strip()


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


# ---- report ---------------------------------------------------------------------------------------

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


def _code_label(meta: dict) -> str:
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
           f"{'; --quick' if results.get('quick') else ''}; code {_code_label(results)}.", "",
           "| # | figure | value | goal | result |", "|---|---|---|---|---|"]
    for r in results["figures"]:
        result = ("ERROR" if r.get("error") else "info" if r["pass"] is None
                  else "pass" if r["pass"] else "**not reached**")
        cells = [r["id"], r["figure"], r["display"], r["goal"], result]
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)


STEP_IDS = {"http2": "H", "saturation": "1-3", "capacity": "4", "bodies": "5", "startup": "6", "memory": "7",
            "versus_tshark": "8", "exports": "9", "parser_bench": "P", "profile": "prof"}

FIGURES = {
    "1": "saturation", "2": "saturation", "3": "saturation", "4": "capacity", "5": "bodies",
    "6": "startup", "7": "memory", "8": "versus_tshark", "9": "exports", "H": "http2", "P": "parser_bench",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma list of figures: 1-9, P (parser bench)")
    parser.add_argument("--quick", action="store_true", help="shorter loads (rougher numbers)")
    parser.add_argument("--profile", action="store_true", help="py-spy the agent under saturation")
    parser.add_argument("--out", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--markdown", metavar="RESULTS_JSON", help="print a results file's table as Markdown, then exit")
    opts = parser.parse_args()
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
            parser.error(f"unknown figure {fid!r}")
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
                getattr(bench, step)()
            except Exception as exc:   # one broken figure must not hide the others
                traceback.print_exc()
                bench.rows.append({"id": STEP_IDS.get(step, step), "figure": step, "value": None, "display": f"error: {exc}"[:200],
                                   "goal": "", "pass": False, "error": True, "detail": {}})
            bench.raw.setdefault("step_seconds", {})[step] = round(time.monotonic() - t0, 1)
    finally:
        bench.cleanup()
    meta["noise_end"] = noise()
    meta["seconds"] = round(time.monotonic() - started, 1)
    order = {k: i for i, k in enumerate(["1-3", "1", "1c", "2a", "2ac", "2b", "2bc", "2c", "2cc", "3", "3c", "H", "Hc", "4", "5", "5b", "6", "7", "7b", "8", "9a", "9b", "P",
                                          "prof"])}
    bench.rows.sort(key=lambda r: order.get(r["id"], 99))
    with open(opts.out, "w") as f:
        json.dump({**meta, "figures": bench.rows, "raw": bench.raw}, f, indent=1, default=str)
    print()
    print(f"httptrace benchmarks {meta['date']}  ({meta['machine']['nproc']} CPUs {meta['machine']['cpu']}, "
          f"Linux {meta['machine']['kernel']}; {meta['seconds']:.0f} s; load avg "
          f"{meta['noise_start']['loadavg']:.2f} -> {meta['noise_end']['loadavg']:.2f}; code {_code_label(meta)})")
    print_table(bench.rows)
    print(f"\nwritten: {os.path.relpath(opts.out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
