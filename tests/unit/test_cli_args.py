"""The CLI end to end, with a fake Tracer: no root, no kernel."""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pathlib
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from httptrace import cli
from httptrace._log import get_logger
from httptrace.errors import EnvironmentProblem, LibbpfError
from httptrace.exchange import Flag, Role

from .test_output_common import make_exchange, make_request, make_response

REPO = pathlib.Path(__file__).resolve().parents[2]
STATS = {"events": 120, "bytes": 34512, "exchanges": 4, "connections": 2, "drops": 0, "gaps": 0,
         "truncated": 1, "parse_errors": 0, "idle_expired": 3, "upgrades": 0}


class FakeTracer:
    """Stands in for httptrace.tracer.Tracer: yields canned exchanges, then blocks until stop()
    when `block` (like the real one waiting for traffic)."""

    def __init__(self, exchanges=(), stats=None, block=False, during=None, enter_error=None, **options):
        self.options = options
        self._exchanges = list(exchanges)
        self._stats = dict(STATS if stats is None else stats)
        self._block = block
        self._during = during or {}     # index -> callable run just before yielding that exchange
        self._enter_error = enter_error
        self.stopped = threading.Event()
        self.entered = self.exited = False

    def __enter__(self):
        if self._enter_error is not None:
            raise self._enter_error
        self.entered = True
        return self

    def __exit__(self, *exc):
        self.exited = True

    def exchange_batches(self):
        """One exchange per batch, like a quiet server: each is written and flushed on its own."""
        for index, exchange in enumerate(self._exchanges):
            if self.stopped.is_set():
                return
            if index in self._during:
                self._during[index]()
            yield [exchange]
        while self._block and not self.stopped.wait(0.01):
            yield []

    def stop(self):
        self.stopped.set()

    def stats(self):
        return dict(self._stats)


@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures the `httptrace` logger for the process; give the other tests theirs back."""
    logger = logging.getLogger("httptrace")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def tracer_factory(monkeypatch):
    """Install a FakeTracer for main(); returns a list that receives each one created."""
    created = []

    def install(**fake_options):
        def open_tracer(**options):
            tracer = FakeTracer(**fake_options, **options)
            created.append(tracer)
            return tracer
        monkeypatch.setattr(cli, "_open_tracer", open_tracer)
        return created
    return install


def some_exchanges():
    return [
        make_exchange(),
        make_exchange(request=make_request(method="POST", target="/api/orders"),
                      response=make_response(status=503, reason="Service Unavailable")),
        make_exchange(request=make_request(target="/health"), role=Role.SERVER, comm="nginx"),
        make_exchange(request=make_request(target="/api/slow", headers=(("Authorization", "Bearer s3cret"),)),
                      response=make_response(status=404, start=make_request().first_byte_ns + 900_000_000)),
        make_exchange(response=None, flags=[Flag.INCOMPLETE]),
    ]


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- option parsing ---------------------------------------------------------------

@pytest.mark.parametrize("text, size", [("4096", 4096), ("64K", 65536), ("64k", 65536), ("8M", 8 << 20),
                                        ("1G", 1 << 30), ("2MiB", 2 << 20), ("512KB", 512 << 10), ("0", 0)])
def test_parse_size(text, size):
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1", "8T", "12 parsecs"])
def test_parse_size_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


def test_defaults():
    args = cli.parse_args([])
    assert (args.pid, args.port, args.comm, args.format, args.output, args.verbose) == (None, None, None,
                                                                                       "text", None, 0)
    assert args.tls and args.include_bodies and not args.no_redact and args.log_level == "info"
    assert args.max_body is None and args.ring_buffer_size is None and args.count is None


def test_repeatable_and_comma_options():
    args = cli.parse_args(["--pid", "1", "--pid", "22", "--port", "80", "--port", "443", "--method", "get,post",
                           "--status", "5xx,404", "--status", "201", "--redact", "X-Api-Key", "-vv",
                           "--ring-buffer-size", "64M", "--max-body", "1K", "--no-tls", "--no-body"])
    assert args.pid == [1, 22] and args.port == [80, 443] and args.verbose == 2
    assert args.ring_buffer_size == 64 << 20 and args.max_body == 1024 and not args.tls
    keep = cli.exchange_filter_from_args(args)
    assert keep.methods == {"GET", "POST"} and keep.exact_statuses == {404, 201} and keep.status_classes == {5}


@pytest.mark.parametrize("output, fmt", [(None, "text"), ("-", "text"), ("x.har", "har"), ("X.HAR", "har"),
                                         ("x.jsonl", "json"), ("x.ndjson", "json"), ("x.txt", "text")])
def test_format_follows_the_output_suffix(output, fmt):
    assert cli.infer_format(output) == fmt
    argv = ["-o", output] if output else []
    assert cli.parse_args(argv).format == fmt
    assert cli.parse_args([*argv, "--format", "json"]).format == "json"


@pytest.mark.parametrize("argv, fragment", [
    (["--path", "("], "invalid regular expression '('"),
    (["--status", "6xx"], "invalid status '6xx'"),
    (["--port", "70000"], "--port must be between 1 and 65535"),
    (["--port", "http"], "--port must be an integer"),
    (["--pid", "0"], "--pid must be at least 1"),
    (["--method", "GET POST"], "invalid HTTP method"),
    (["--min-latency", "-5"], "--min-latency must be >= 0"),
    (["--duration", "0"], "--duration must be > 0"),
    (["-c", "0"], "--count must be at least 1"),
    (["--ring-buffer-size", "lots"], "invalid size 'lots'"),
    (["--role", "proxy"], "invalid choice: 'proxy'"),
    (["--format", "pcap"], "invalid choice: 'pcap'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_one_line_and_exit_2(argv, fragment, capsys, tracer_factory):
    created = tracer_factory()
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("httptrace: error: ") and fragment in err, err
    assert "Traceback" not in err and created == []


def test_help_has_examples(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "examples:" in out and "httptrace --format har -o capture.har" in out and "--min-latency MS" in out


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("httptrace ")


def test_help_works_without_the_tracer_module():
    script = ("import sys; sys.modules['httptrace.tracer'] = sys.modules['httptrace.checks'] = None; "
              "from httptrace.cli import main; sys.exit(main(['--help']))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "usage: httptrace" in result.stdout


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "httptrace", "--status", "9xx"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("httptrace: error: argument --status")


# --- running a capture ------------------------------------------------------------

def test_kernel_side_options_reach_the_tracer(capsys, tracer_factory):
    created = tracer_factory(exchanges=[])
    code, _, _ = run(["--pid", "7", "--pid", "8", "--port", "8080", "--comm", "nginx", "--max-body", "64K",
                      "--ring-buffer-size", "8M", "--no-tls", "--programs", "compat"], capsys)
    assert code == 0
    assert created[0].options == {"pids": [7, 8], "ports": [8080], "comm": "nginx", "max_body": 65536,
                                  "ring_buffer_size": 8 << 20, "tls": False, "programs": "compat"}
    assert created[0].entered and created[0].exited


def test_unset_options_leave_the_tracer_defaults(capsys, tracer_factory):
    created = tracer_factory(exchanges=[])
    run([], capsys)
    assert created[0].options == {"pids": None, "ports": None, "comm": None, "ring_buffer_size": None,
                                  "tls": True, "programs": None}


def test_long_comm_is_cut_to_what_the_kernel_keeps(capsys, tracer_factory):
    created = tracer_factory(exchanges=[])
    _, _, err = run(["--comm", "a-very-long-process-name"], capsys)
    assert created[0].options["comm"] == "a-very-long-pro"
    assert "15 characters" in err


def test_text_output_and_summary(capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    code, out, err = run([], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 5
    assert " GET /api/users?id=7 200 " in lines[0] and " POST /api/orders 503 " in lines[1]
    assert "\x1b[" not in out           # not a TTY: no colour
    summary = [line for line in err.splitlines() if line.startswith("httptrace summary:")]
    assert summary == [summary[0]]
    assert ("shown=5 exchanges=4 bytes=34512 connections=2 drops=0 gaps=0 truncated=1 parse_errors=0 "
            "events=120 idle_expired=3 elapsed=") in summary[0]   # zero extras (upgrades) left out


def test_summary_counts_exchanges_skipped_under_overload(capsys, tracer_factory):
    """The kernel's whole-exchange shedding is in the summary, after drops, and said in words at exit."""
    tracer_factory(exchanges=some_exchanges(), stats={**STATS, "skipped_requests": 7, "skipped_responses": 6})
    code, out, err = run(["--format", "json"], capsys)
    assert code == 0
    (summary,) = [line for line in err.splitlines() if line.startswith("httptrace summary:")]
    assert " drops=0 skipped_requests=7 skipped_responses=6 gaps=0 " in summary
    (warning,) = [json.loads(line) for line in err.splitlines() if "not_captured" in line]
    assert warning["not_captured"] == 7 and "overload" in warning["event"]


def test_no_overload_warning_without_skips(capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges(), stats={**STATS, "skipped_requests": 0, "skipped_responses": 0})
    code, out, err = run(["--format", "json"], capsys)
    assert code == 0 and "not_captured" not in err
    assert " drops=0 skipped_requests=0 skipped_responses=0 gaps=0 " in err


def test_count_stops_after_n_shown_exchanges_after_filters(capsys, tracer_factory):
    created = tracer_factory(exchanges=some_exchanges() * 3, block=True)
    code, out, err = run(["--format", "json", "-c", "2", "--method", "GET"], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["request"]["target"] for r in records] == ["/api/users?id=7", "/health"]
    assert created[0].stopped.is_set() and "shown=2 " in err


@pytest.mark.parametrize("argv, targets", [
    (["--status", "5xx"], ["/api/orders"]),
    (["--status", "404,503"], ["/api/orders", "/api/slow"]),
    (["--path", "^/api/"], ["/api/users?id=7", "/api/orders", "/api/slow", "/api/users?id=7"]),
    (["--role", "server"], ["/health"]),
    (["--min-latency", "500"], ["/api/slow"]),
    (["--method", "post"], ["/api/orders"]),
    (["--method", "GET", "--path", "slow|health"], ["/health", "/api/slow"]),
])
def test_user_space_filters(argv, targets, capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    code, out, _ = run(["--format", "json", *argv], capsys)
    assert code == 0
    assert [json.loads(line)["request"]["target"] for line in out.splitlines()] == targets


def test_json_is_redacted_by_default(capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    code, out, err = run(["--format", "json", "--path", "slow"], capsys)
    assert json.loads(out)["request"]["headers"] == [["Authorization", "Bearer [REDACTED]"]]
    assert "s3cret" not in out and "redaction disabled" not in err


def test_extra_redacted_header(capsys, tracer_factory):
    request = make_request(headers=(("X-Api-Key", "k-123"),))
    tracer_factory(exchanges=[make_exchange(request=request)])
    _, out, _ = run(["--format", "json", "--redact", "x-api-key"], capsys)
    assert json.loads(out)["request"]["headers"] == [["X-Api-Key", "[REDACTED]"]]


def test_no_redact_warns_and_shows_values(capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    code, out, err = run(["-v", "--no-redact", "--path", "slow"], capsys)
    assert code == 0 and "Authorization: Bearer s3cret" in out
    assert "redaction disabled" in err


def test_verbose_text_is_redacted(capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    _, out, _ = run(["-vv", "--path", "slow"], capsys)
    assert "Authorization: Bearer [REDACTED]" in out and "s3cret" not in out


def test_output_file_is_private(tmp_path, capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    path = tmp_path / "capture.jsonl"
    old_umask = os.umask(0)             # even with a permissive umask
    try:
        code, out, _ = run(["-o", str(path)], capsys)
    finally:
        os.umask(old_umask)
    assert code == 0 and out == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len([json.loads(line) for line in path.read_text().splitlines()]) == 5


def test_existing_output_file_is_narrowed_to_0600(tmp_path, capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    path = tmp_path / "capture.har"
    path.write_text("old contents")
    path.chmod(0o644)
    code, _, _ = run(["-o", str(path)], capsys)
    assert code == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(json.loads(path.read_text())["log"]["entries"]) == 5


@pytest.mark.parametrize("target", ["missing-dir/out.jsonl", "."])
def test_unwritable_output_is_a_clean_error(tmp_path, target, capsys, tracer_factory):
    created = tracer_factory(exchanges=some_exchanges())
    code, out, err = run(["-o", str(tmp_path / target)], capsys)
    assert code == 2 and out == "" and created == []
    assert err.startswith("httptrace: error: cannot open output file") and err.count("\n") == 1
    assert "choose a writable path" in err


def test_read_only_directory_is_a_clean_error(tmp_path, capsys, tracer_factory):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; the missing-directory case covers the message")
    tracer_factory(exchanges=[])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run(["-o", str(locked / "x.har")], capsys)
    assert code == 2 and "Permission denied" in err


def test_har_to_stdout(capsysbinary, tracer_factory):
    tracer_factory(exchanges=some_exchanges())
    code = cli.main(["--format", "har"])
    out, _ = capsysbinary.readouterr()
    assert code == 0 and len(json.loads(out)["log"]["entries"]) == 5


@pytest.mark.parametrize("error, expected", [
    (EnvironmentProblem("must run as root", "run with sudo, or grant CAP_BPF and CAP_PERFMON"),
     "httptrace: error: must run as root (run with sudo, or grant CAP_BPF and CAP_PERFMON)\n"),
    (EnvironmentProblem("kernel 5.4 is too old", "httptrace needs Linux 5.17 or newer"),
     "httptrace: error: kernel 5.4 is too old (httptrace needs Linux 5.17 or newer)\n"),
    (LibbpfError("load BPF object", 22, "Invalid argument"),
     "httptrace: error: failed to load BPF object: Invalid argument (errno 22) "
     "(run httptrace --check for details)\n"),
])
def test_environment_problems_are_one_line_exit_2(error, expected, capsys, tracer_factory):
    tracer_factory(enter_error=error)
    code, out, err = run([], capsys)
    assert code == 2 and out == ""
    assert err == expected


def test_a_failed_start_keeps_an_earlier_capture(tmp_path, capsys, tracer_factory):
    tracer_factory(enter_error=EnvironmentProblem("must run as root", "run with sudo"))
    earlier = tmp_path / "earlier.har"
    earlier.write_text("yesterday's capture")
    code, _, _ = run(["-o", str(earlier)], capsys)
    assert code == 2 and earlier.read_text() == "yesterday's capture"
    fresh = tmp_path / "fresh.jsonl"
    code, _, _ = run(["-o", str(fresh)], capsys)
    assert code == 2 and not fresh.exists()      # created by us, nothing captured: removed


def test_problem_while_running_still_prints_the_summary(capsys, tracer_factory):
    def fail():
        raise EnvironmentProblem("ring buffer poll failed", "run httptrace --check")
    tracer_factory(exchanges=some_exchanges(), during={2: fail})
    code, out, err = run([], capsys)
    assert code == 2 and len(out.splitlines()) == 2
    assert "httptrace summary: shown=2 " in err
    assert err.endswith("httptrace: error: ring buffer poll failed (run httptrace --check)\n")


def test_ctrl_c_before_capture_starts_is_quiet(capsys, tracer_factory):
    tracer_factory(enter_error=KeyboardInterrupt())
    code, _, err = run([], capsys)
    assert code == 130 and "Traceback" not in err


def test_sigterm_stops_cleanly_with_summary(tmp_path, capsys, tracer_factory):
    path = tmp_path / "t.har"
    created = tracer_factory(exchanges=some_exchanges(), block=True,
                             during={2: lambda: os.kill(os.getpid(), signal.SIGTERM)})
    handler_before = signal.getsignal(signal.SIGTERM)
    code, _, err = run(["-o", str(path)], capsys)
    assert code == 0 and created[0].stopped.is_set()
    assert "httptrace summary: shown=2 " in err or "httptrace summary: shown=3 " in err
    assert len(json.loads(path.read_text())["log"]["entries"]) in (2, 3)
    assert signal.getsignal(signal.SIGTERM) is handler_before     # handlers are put back


def test_ctrl_c_stops_like_sigterm(capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges(), block=True, during={1: lambda: os.kill(os.getpid(), signal.SIGINT)})
    code, out, err = run([], capsys)
    assert code == 0 and "httptrace summary:" in err


def test_sigusr1_prints_the_summary_while_running(capsys, tracer_factory):
    tracer_factory(exchanges=some_exchanges(), during={3: lambda: os.kill(os.getpid(), signal.SIGUSR1)})
    code, _, err = run([], capsys)
    summaries = [line for line in err.splitlines() if line.startswith("httptrace summary:")]
    assert code == 0 and len(summaries) == 2
    assert "shown=3 " in summaries[0] and "shown=5 " in summaries[1]   # and the capture went on


def test_duration_stops_the_capture(capsys, tracer_factory):
    created = tracer_factory(exchanges=some_exchanges()[:1], block=True)
    started = time.monotonic()
    code, out, err = run(["--duration", "0.2"], capsys)
    assert code == 0 and 0.15 < time.monotonic() - started < 5
    assert created[0].stopped.is_set() and len(out.splitlines()) == 1 and " elapsed=" in err


def test_drops_produce_a_warning(capsys, tracer_factory):
    tracer_factory(exchanges=[], stats={**STATS, "drops": 17})
    _, _, err = run([], capsys)
    assert "drops=17" in err and "events were dropped" in err and "--ring-buffer-size" in err


def test_broken_pipe_ends_quietly(capsys, tracer_factory, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    created = tracer_factory(exchanges=some_exchanges(), block=True)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = cli.main(["--format", "json"])
    _, err = capsys.readouterr()
    assert code == 0 and created[0].stopped.is_set() and "Traceback" not in err


def test_write_failure_on_the_output_file_is_a_clean_error(tmp_path, capsys, tracer_factory, monkeypatch):
    tracer_factory(exchanges=some_exchanges())
    from httptrace.output import jsonl

    def disk_full(self, exchange):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(jsonl.JsonLinesWriter, "write", disk_full)
    code, _, err = run(["-o", str(tmp_path / "x.jsonl")], capsys)
    assert code == 2 and err.endswith("httptrace: error: cannot write output: No space left on device "
                                      "(check free space and the -o path)\n")
    assert "httptrace summary: shown=0 " in err


# --- --check ----------------------------------------------------------------------

class Check:
    def __init__(self, name, ok, detail, fix=""):
        self.name, self.ok, self.detail, self.fix = name, ok, detail, fix


def test_check_all_ok(capsys, monkeypatch, tracer_factory):
    created = tracer_factory()
    monkeypatch.setattr(cli, "_run_checks", lambda programs: [Check("privileges", True, "root"),
                                                     Check("btf", True, "/sys/kernel/btf/vmlinux")])
    code, out, _ = run(["--check"], capsys)
    assert code == 0 and created == []
    assert out == "ok   privileges: root\nok   btf: /sys/kernel/btf/vmlinux\n2/2 checks passed\n"


def test_check_with_a_problem_exits_1(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_run_checks", lambda programs: [
        Check("privileges", False, "not root", "run with sudo"), Check("kernel", True, "Linux 6.8")])
    code, out, _ = run(["--check"], capsys)
    assert code == 1
    assert "FAIL privileges: not root (run with sudo)\n" in out and "1/2 checks passed" in out


# --- logging ----------------------------------------------------------------------

def test_logging_is_json_when_not_a_terminal():
    stream = io.StringIO()
    cli.configure_logging("warning", stream)
    logger = get_logger("httptrace.test")
    logger.info("hidden")
    logger.warning("shown", key=1)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["level"], r["key"]) for r in records] == [("shown", "warning", 1)]
    assert records[0]["timestamp"].endswith("Z")


def test_logging_is_readable_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    stream = Terminal()
    cli.configure_logging("debug", stream)
    get_logger("httptrace.test").debug("hello", who="sre")
    text = stream.getvalue()
    assert "hello" in text and "who=sre" in text and not text.startswith("{")


# --- signals against a real process -------------------------------------------------

_CLI_SCRIPT = textwrap.dedent("""
    import sys, threading
    from httptrace import cli
    from tests.unit.test_output_common import make_exchange, make_response

    class Tracer:
        def __init__(self, **options):
            self.stopped = threading.Event()
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            pass
        def exchange_batches(self):
            exchange = make_exchange(response=make_response(body=b"z" * 50_000))
            yield [exchange]
            print("ready", file=sys.stderr, flush=True)   # the first batch is written by now
            while not self.stopped.is_set():
                yield [exchange, exchange]
        def stop(self):
            self.stopped.set()
        def stats(self):
            return {"exchanges": 1}

    cli._open_tracer = Tracer
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("to_stdout", [False, True])
def test_har_is_valid_whenever_a_signal_arrives(tmp_path, signum, to_stdout):
    path = tmp_path / "live.har"
    for delay in (0.0, 0.1):
        argv = ["--format", "har"] if to_stdout else ["-o", str(path)]
        with open(path, "wb") as stdout:
            process = subprocess.Popen([sys.executable, "-c", _CLI_SCRIPT, *argv], cwd=REPO,
                                       stdout=stdout if to_stdout else subprocess.DEVNULL, stderr=subprocess.PIPE)
            while process.stderr.readline() not in (b"ready\n", b""):   # skip log lines
                pass
            time.sleep(delay)
            process.send_signal(signum)
            _, err = process.communicate(timeout=20)
        assert process.returncode == 0, err
        assert b"httptrace summary: shown=" in err and b"Traceback" not in err
        document = json.loads(path.read_bytes())
        assert document["log"]["entries"]
        if not to_stdout:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
