"""The Python API as a program that imports it meets it: quiet, stoppable, asyncio, and docs/api.md's
examples run as written against a real server.

Servers and clients are other processes: a Tracer never traces the process it runs in."""
from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from httptrace import Flag, Role, Tracer

from .conftest import HERE, free_port, on_loopback_port, require_tool, serving

ROOT = os.path.dirname(os.path.dirname(HERE))
PY_SERVER = os.path.join(HERE, "servers", "py_server.py")
DOCS = os.path.join(ROOT, "docs", "api.md")


@pytest.fixture
def server():
    """The port of tests/e2e/servers/py_server.py (GET /size/N, GET /sleep/MS, POST /echo)."""
    port = free_port(socket.AF_INET6)
    with serving([sys.executable, PY_SERVER, str(port)], port, "::1"):
        yield port


def get(port: int, *targets: str) -> None:
    """One curl process, one keep-alive connection, these requests in order."""
    require_tool("curl")
    subprocess.run(["curl", "-sS", *curl_urls(port, targets)], check=True, timeout=60)


def curl_urls(port: int, targets) -> list[str]:
    """curl's arguments for these URLs, each body to /dev/null (one -o per URL)."""
    return [arg for target in targets for arg in ("-o", "/dev/null", f"http://127.0.0.1:{port}{target}")]


def background_get(port: int, target: str) -> subprocess.Popen:
    return subprocess.Popen(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{port}{target}"])


def served(exchanges, port: int) -> list:
    """The server's side of the exchanges with our server (the client, curl, is traced too)."""
    return [ex for ex in exchanges if ex.connection.role is Role.SERVER and on_loopback_port(ex.connection, port)]


# ---- quiet by default ---------------------------------------------------------------------------

QUIET_SCRIPT = """
import subprocess, sys
from httptrace import Role, Tracer

port = int(sys.argv[1])
targets = ["/size/1", "/size/2", "/size/3"]
seen = []
with Tracer(ports=[port]) as tracer:
    urls = [arg for target in targets for arg in ("-o", "/dev/null", f"http://127.0.0.1:{port}{target}")]
    subprocess.run(["curl", "-sS", *urls], check=True)
    for exchange in tracer.exchanges(timeout=20):
        if exchange.connection.role is Role.SERVER and exchange.request.target in targets:
            seen.append(exchange.request.target)
            if len(seen) == len(targets):
                break
print("seen", *seen)
"""


def test_a_script_using_the_api_prints_only_what_it_prints(server):
    result = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, str(server)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "seen /size/1 /size/2 /size/3\n"
    # Info events (attached, TLS libraries probed) are for whoever configures logging; not printed.
    assert "attached" not in result.stderr and "probing TLS library" not in result.stderr, result.stderr


LOGGING_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
from httptrace import Tracer
with Tracer(ports=[1]) as tracer:
    pass
"""


def test_an_application_gets_the_diagnostics_through_logging():
    result = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert re.search(r"^httptrace\.tracer INFO attached programs=", result.stderr, re.M), result.stderr


# ---- ending an iteration ------------------------------------------------------------------------

def test_stop_from_another_thread_ends_exchanges(server):
    with Tracer(ports=[server]) as tracer:
        get(server, "/size/7")
        slow = background_get(server, "/sleep/4000")   # still waiting for its answer at stop()
        threading.Timer(1.5, tracer.stop).start()
        started = time.monotonic()
        seen = served(tracer.exchanges(), server)
        elapsed = time.monotonic() - started
    slow.kill()
    slow.wait()
    assert 1.4 <= elapsed < 6, elapsed
    by_target = {ex.request.target: ex for ex in seen}
    assert by_target["/size/7"].response.status == 200 and not by_target["/size/7"].flags
    pending = by_target["/sleep/4000"]
    assert pending.response is None and Flag.INCOMPLETE in pending.flags


def test_stop_from_a_signal_handler_ends_exchanges(server):
    with Tracer(ports=[server]) as tracer:
        previous = signal.signal(signal.SIGALRM, lambda signum, frame: tracer.stop())
        try:
            signal.setitimer(signal.ITIMER_REAL, 1.0)
            get(server, "/size/8")
            started = time.monotonic()
            seen = served(tracer.exchanges(), server)
            elapsed = time.monotonic() - started
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    assert elapsed < 5, elapsed
    assert [ex.request.target for ex in seen] == ["/size/8"]


def test_a_timeout_ends_one_iteration_and_the_next_goes_on(server):
    with Tracer(ports=[server]) as tracer:
        started = time.monotonic()
        assert served(tracer.exchanges(timeout=0.5), server) == []
        elapsed = time.monotonic() - started
        get(server, "/size/9")   # between two iterations: waits in the ring buffer
        later = served(tracer.exchanges(timeout=1.0), server)
    assert 0.5 <= elapsed < 3, elapsed
    assert [ex.request.target for ex in later] == ["/size/9"]


# ---- asyncio ------------------------------------------------------------------------------------

def test_aexchanges_delivers_exchanges_without_blocking_the_loop(server):
    targets = [f"/size/{n}" for n in range(10, 20)]

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        with Tracer(ports=[server]) as tracer:
            ticking = asyncio.create_task(ticker())
            curl = await asyncio.create_subprocess_exec("curl", "-sS", *curl_urls(server, targets))
            seen = []
            started = time.monotonic()
            async for exchange in tracer.aexchanges(timeout=30):
                if exchange.connection.role is Role.SERVER and on_loopback_port(exchange.connection, server):
                    seen.append(exchange.request.target)
                    if len(seen) == len(targets):
                        tracer.stop()   # from the loop: the iteration ends once the reader has drained
            elapsed = time.monotonic() - started
            assert await curl.wait() == 0
            ticking.cancel()
        return seen, ticks, elapsed

    seen, ticks, elapsed = asyncio.run(main())
    assert seen == targets
    assert ticks >= elapsed / 0.01 / 3, (ticks, elapsed)   # the loop ran all along (allowing for a slow host)


def test_a_consumer_that_stops_taking_holds_the_reader_back(server):
    """Backpressure: while the consumer takes nothing, the reader stops reading the ring buffer once
    a few batches wait (its event count stands still); resumed, the consumer still gets everything."""
    sent: list[str] = []
    enough = threading.Event()

    def feed() -> None:   # requests one after another, one connection each, until told
        while not enough.is_set():
            sent.append(f"/size/{len(sent) + 1}")
            get(server, sent[-1])

    async def main():
        with Tracer(ports=[server]) as tracer:
            feeder = threading.Thread(target=feed)
            feeder.start()
            seen, counts, fed_meanwhile = [], [], False
            async for exchange in tracer.aexchanges(timeout=60):
                if not (exchange.connection.role is Role.SERVER and on_loopback_port(exchange.connection, server)):
                    continue
                seen.append(exchange.request.target)
                if len(seen) == 1:
                    await asyncio.sleep(1.0)   # taking nothing while requests go on
                    counts.append(tracer.stats()["events"])
                    await asyncio.sleep(1.0)
                    counts.append(tracer.stats()["events"])
                    fed_meanwhile = feeder.is_alive()
                    enough.set()
                    await asyncio.to_thread(feeder.join)
                if not feeder.is_alive() and len(seen) >= len(sent):
                    tracer.stop()
        return seen, counts, fed_meanwhile

    seen, counts, fed_meanwhile = asyncio.run(main())
    assert fed_meanwhile and len(sent) > 10, sent
    assert counts[0] == counts[1], f"the reader went on reading while nothing was taken: {counts}"
    assert seen == sent


def test_leaving_aexchanges_early_then_closing_leaves_no_reader(server):
    async def main():
        with Tracer(ports=[server]) as tracer:
            get(server, "/size/5")
            async for exchange in tracer.aexchanges(timeout=30):
                if exchange.connection.role is Role.SERVER:
                    break
            return exchange.request.target

    assert asyncio.run(main()) == "/size/5"
    assert [t for t in threading.enumerate() if t.name == "httptrace-reader"] == []


# ---- docs/api.md: every example runs as written -------------------------------------------------

def doc_examples() -> dict[str, str]:
    with open(DOCS) as f:
        text = f.read()
    return dict(re.findall(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", text, re.S))


def setting(code: str, name: str, value: object) -> str:
    """The example with its `NAME = ...` setting changed (its port is the test server's)."""
    changed, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
    assert count == 1, f"the example has no single {name} = ... line"
    return changed


class Example:
    """An example running as a script; its stdout lines are collected as they come."""

    def __init__(self, code: str, tmp_path, name: str):
        path = tmp_path / f"{name}.py"
        path.write_text(code)
        self.proc = subprocess.Popen([sys.executable, "-u", str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def collect(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def traffic_until(self, send, done, timeout: float = 30.0) -> None:
        """Call send() again and again (the example attaches at some point) until done(lines)."""
        deadline = time.monotonic() + timeout
        while not done(self.collect()):
            assert self.proc.poll() is None, f"the example ended: {self.proc.stderr.read()}"
            assert time.monotonic() < deadline, f"nothing expected in {timeout}s: {self.seen}"
            send()
            time.sleep(0.2)

    def finish(self, signum: int | None = None, timeout: float = 30.0) -> list[str]:
        if signum is not None:
            self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout)
        finally:
            self.proc.kill()
        stderr = self.proc.stderr.read()
        assert self.proc.returncode == 0, stderr
        time.sleep(0.1)   # the reader thread takes the last lines
        return self.collect()


def test_the_docs_examples_are_the_ones_tested_here():
    assert set(doc_examples()) == {"reassembler", "slow-requests", "asyncio", "notebook"}


def test_docs_example_reassembler():
    result = subprocess.run([sys.executable, "-c", doc_examples()["reassembler"]], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "/hello 200 b'hi\\n' 2500000\n"


def test_docs_example_slow_requests(server, tmp_path):
    example = Example(setting(doc_examples()["slow-requests"], "PORT", server), tmp_path, "slow_requests")
    example.traffic_until(lambda: get(server, "/size/3", "/sleep/700", "/sleep/10"),
                          lambda lines: any("/sleep/700" in line for line in lines))
    lines = example.finish(signal.SIGINT)
    assert lines and all(re.fullmatch(r" *\d+\.\d ms  GET /sleep/700 -> 200", line) for line in lines), lines
    assert all(float(line.split()[0]) >= 700 for line in lines), lines


def test_docs_example_asyncio(server, tmp_path):
    example = Example(setting(doc_examples()["asyncio"], "PORT", server), tmp_path, "asyncio_consumer")
    example.traffic_until(lambda: get(server, "/size/2", "/missing"),
                          lambda lines: "200 GET /size/2" in lines and "404 GET /missing" in lines)
    lines = example.finish(signal.SIGTERM)
    summary = dict(line.split(": ") for line in lines if ": " in line)   # printed after the capture
    printed = [line for line in lines if ": " not in line]
    assert lines[-len(summary):] == [f"{status}: {count}" for status, count in summary.items()], lines
    assert set(printed) <= {"200 GET /size/2", "404 GET /missing", "no response GET /size/2",
                            "no response GET /missing"}, printed
    assert int(summary["200"]) == printed.count("200 GET /size/2") >= 1
    assert int(summary["404"]) == printed.count("404 GET /missing") >= 1


def test_docs_example_notebook(server, tmp_path):
    code = setting(setting(doc_examples()["notebook"], "PORT", server), "SECONDS", 4)
    example = Example(code, tmp_path, "notebook")
    started = time.monotonic()
    while example.proc.poll() is None and time.monotonic() - started < 30:
        get(server, "/size/4")
        time.sleep(0.2)
    lines = example.finish()
    rows = [line.split("  ") for line in lines]
    assert rows and all(len(row) == 7 for row in rows), lines
    served_rows = [row for row in rows if row[2] == "server"]
    assert served_rows and all(row[3:5] == ["GET", "/size/4"] for row in served_rows), rows
    assert sum(row[5] == "200" for row in served_rows) >= len(served_rows) - 1   # the last may be cut by the end
    assert all(row[1] == "curl" for row in rows if row[2] == "client"), rows
