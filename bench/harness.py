"""What every figure of `make bench` shares: the agent in a child process, the load generators (wrk,
ab), the servers (nginx, the seed), CPU/memory readings from /proc and wait4(), the account of
requests against exchanges, and the Bench session (snapshot of the code, agents to clean up, rows).

Every load is bounded in count or time and targets 127.0.0.1 only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time

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


AGENT_CWD = ROOT   # Bench.snapshot points this at its copy of httptrace/


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
        _unignore_sigint()
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
                    return parse_summary(line)
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
                self.summary = parse_summary(line)
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


def _unignore_sigint() -> None:
    """A background job of a non-interactive shell (`cmd &` in a script, some CI runners) starts with
    SIGINT ignored, an ignored signal stays ignored across exec, and the CLI then keeps ignoring it on
    purpose (nohup): stop() would wait out its timeout and kill the agent, without a summary.  A handler
    (unlike SIG_IGN) is reset to the default by exec, so install one here."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def parse_summary(line: str) -> dict:
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
    """Every exchange the load completed must be an emitted exchange (complete or flagged), a request
    the reassembler knows it lost, or a request the kernel skipped whole under overload
    (`skipped_requests`; the summary has it only where the kernel sheds load).  The server may also
    have seen up to `in_flight` requests the load generator gave up on when it stopped (they are
    captured, possibly flagged incomplete)."""
    exchanges = summary.get("exchanges", 0)
    seen = exchanges + summary.get("lost_requests", 0) + summary.get("skipped_requests", 0)
    return {
        "load_requests": requests,
        "exchanges": exchanges,
        "complete": exchanges - summary.get("incomplete", 0),
        "incomplete": summary.get("incomplete", 0),
        "lost_requests": summary.get("lost_requests", 0),
        "skipped_requests": summary.get("skipped_requests", 0),
        "skipped_responses": summary.get("skipped_responses", 0),
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
    for pct in (50, 99):   # --latency's distribution: 50%, 75%, 90%, 99%
        found = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)", text, re.M)
        result[f"p{pct}_ms"] = _seconds(found.group(1), found.group(2)) * 1e3 if found else None
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


# ---- rows and the session ------------------------------------------------------------------------

def row(fid: str, figure: str, value, display: str, goal: str, ok: bool | None, **detail) -> dict:
    return {"id": fid, "figure": figure, "value": value, "display": display, "goal": goal, "pass": ok,
            "detail": detail}


class Bench:
    """One run of the benchmarks: the servers, the agents still running (killed by cleanup()), and the
    table rows and raw numbers the figures add (bench/figures/*.py, each a run(bench) function)."""

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
