"""Command line: `httptrace` / `python -m httptrace`.

Parses options, opens the output, runs the Tracer and hands each completed exchange
through the user-space filters to a writer.  Problems the user can fix end as one line
on stderr and exit code 2, never a traceback.  Exit codes are listed in docs/cli.md.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import re
import signal
import stat
import sys
import threading
import time
from types import FrameType
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, NoReturn, Protocol

import structlog

from httptrace._log import EVENT_ATTRIBUTE, get_logger
from httptrace.errors import EnvironmentProblem, HttptraceError, LibbpfError
from httptrace.filters import (
    ExchangeFilter, FilterSpecError, build_filter, compile_path_regex, parse_methods, parse_statuses,
)
from httptrace.output import FORMATS, OutputOptions, httptrace_version, make_writer
from httptrace.redact import DEFAULT_REDACTED_HEADERS, Redactor

if TYPE_CHECKING:
    from httptrace.checks import CheckResult
    from httptrace.containers import ContainerResolver
    from httptrace.exchange import Exchange
    from httptrace.gotls import GoProgram
    from httptrace.metrics import Metrics
    from httptrace.otel import SpanExport
    from httptrace.output import ExchangeWriter
    from httptrace.tracer import Tracer

EXIT_OK = 0
EXIT_CHECK_FAILED = 1      # --check ran and found a problem
EXIT_ERROR = 2             # bad option, environment problem, unwritable output
EXIT_INTERRUPTED = 130     # Ctrl-C before capture started, or a second Ctrl-C

TASK_COMM_LEN = 16         # the kernel keeps 15 characters of a command name
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")

log = get_logger("httptrace.cli")

EXAMPLES = """\
examples:
  httptrace                                   every HTTP/1.x exchange on the host
  httptrace --port 8080 -v                    traffic on port 8080, with headers
  httptrace --comm nginx --status 5xx         nginx's server errors
  httptrace --pid 4242 --min-latency 500      requests of one process slower than 500 ms
  httptrace --path '^/api/' --method POST -vv POST bodies to /api/...
  httptrace --format json -c 100 | jq .       100 exchanges as JSON Lines
  httptrace --format har -o capture.har --duration 60
                                              one minute of traffic for browser devtools
  httptrace --check                           can this host run httptrace?

Authorization, Proxy-Authorization, Cookie and Set-Cookie values are redacted
unless --no-redact.  Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with BTF.
Exit status: 0 ok, 1 --check found a problem, 2 usage or environment error,
130 interrupted before capture started.
"""


# --- option parsing ---------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, with the way out, instead of usage + error
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_in(low: int, high: int | None, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, not {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, not {value}")
        return value
    return parse


_SIZE = re.compile(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """"4096", "64K", "8M", "1GiB" -> bytes (binary multiples)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use bytes or a K/M/G suffix, e.g. 64K)")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]


def _ring_buffer_size(text: str) -> int:
    size = parse_size(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"ring buffer size must be positive, not {text!r}")
    return size   # the Tracer rounds it up to a power-of-two number of pages


def _positive_number(what: str, allow_zero: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, not {text!r}")
        return value
    return parse


def _container_prefix(text: str) -> str:
    prefix = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
        raise argparse.ArgumentTypeError(f"--container takes the start of a container id (hex digits), not {text!r}")
    return prefix


def container_scope(prefixes: Iterable[str] | None,
                    resolver: ContainerResolver | None = None) -> Callable[[Exchange], bool] | None:
    """The --container filter: exchange -> bool, or None when every process is in scope."""
    if not prefixes:
        return None
    from httptrace.containers import default_resolver

    resolver = resolver or default_resolver()
    prefixes = tuple(prefixes)

    def in_scope(exchange: Exchange) -> bool:
        container = resolver.for_connection(exchange.connection)
        return container is not None and container.id.startswith(prefixes)
    return in_scope


def _listen_address(text: str) -> tuple[str, int]:
    from httptrace.metrics import parse_listen_address   # pure parsing: no optional package needed
    try:
        return parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _otlp_url(text: str) -> str:
    from httptrace.otel import traces_url   # pure parsing: no optional package needed
    try:
        return traces_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _checked(validate: Callable[[str], object]) -> Callable[[str], str]:
    """Run a filters.py parser for validation but keep the user's text."""
    def parse(text: str) -> str:
        try:
            validate(text)
        except FilterSpecError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="httptrace",
        description="Capture HTTP/1.x exchanges of processes on this host with eBPF, "
                    "without touching the traffic.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    capture = parser.add_argument_group("what to capture (applied in the kernel)")
    capture.add_argument("--pid", action="append", type=_int_in(1, None, "--pid"), metavar="PID",
                         help="only this process (repeatable)")
    capture.add_argument("--comm", metavar="NAME",
                         help="only processes with this command name (as in ps -o comm; 15 characters max)")
    capture.add_argument("--port", action="append", type=_int_in(1, 65535, "--port"), metavar="PORT",
                         help="only connections with this local or remote port (repeatable)")
    capture.add_argument("--no-tls", dest="tls", action="store_false",
                         help="do not hook TLS libraries; plaintext sockets only")
    capture.add_argument("--max-body", type=parse_size, metavar="BYTES",
                         help="capture at most this much of each body, e.g. 64K (default 16M); "
                              "longer bodies are flagged truncated")
    capture.add_argument("--programs", choices=("auto", "fast", "compat"),  # checks.PROGRAM_FAMILIES
                         help="kernel programs: fast (Linux 5.17+: exit-only hooks, bpf_loop), compat "
                              "(5.8+: entry+exit hooks, bounded copy loop) or auto (default: fast where "
                              "the kernel has its helpers; HTTPTRACE_PROGRAMS sets it too)")
    capture.add_argument("--container", action="append", metavar="ID-PREFIX",
                         type=_container_prefix,
                         help="only processes in a container whose id starts with this (repeatable; "
                              "docker, containerd, CRI-O, podman, Kubernetes; applied in user space, "
                              "to the output, metrics and spans alike)")
    capture.add_argument("--ring-buffer-size", type=_ring_buffer_size, metavar="BYTES",
                         help="kernel-to-user ring buffer size, e.g. 64M (default 32M, rounded up "
                              "to a power of two); raise it if the summary reports drops")

    select = parser.add_argument_group("which exchanges to show")
    select.add_argument("--method", action="append", type=_checked(lambda t: parse_methods([t])),
                        metavar="METHOD", help="request method, e.g. GET (repeatable or comma list)")
    select.add_argument("--path", type=_checked(compile_path_regex), metavar="REGEX",
                        help="regular expression searched in the request target (path and query)")
    select.add_argument("--status", action="append", type=_checked(lambda t: parse_statuses([t])),
                        metavar="STATUS", help="response status: 404, 5xx (repeatable or comma list)")
    select.add_argument("--min-latency", type=_positive_number("--min-latency", allow_zero=True),
                        metavar="MS", help="only exchanges that took at least this many milliseconds")
    select.add_argument("--role", choices=("client", "server"),
                        help="only exchanges where the traced process is the client or the server")
    select.add_argument("-c", "--count", type=_int_in(1, None, "--count"), metavar="N",
                        help="stop after showing N exchanges")
    select.add_argument("--duration", type=_positive_number("--duration"), metavar="SECONDS",
                        help="stop after this many seconds")

    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=FORMATS,
                        help="text (default), json (JSON Lines) or har (HAR 1.2); "
                             "with -o FILE.har or FILE.jsonl the suffix picks the default")
    output.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE (created mode 0600) instead of standard output")
    output.add_argument("-v", "--verbose", action="count", default=0,
                        help="text: -v adds headers, -vv adds bodies")
    output.add_argument("--no-body", dest="include_bodies", action="store_false",
                        help="leave bodies out of every format (sizes are kept)")
    output.add_argument("--redact", action="append", default=[], metavar="HEADER",
                        help="also redact this header's value (repeatable); "
                             f"always redacted: {', '.join(DEFAULT_REDACTED_HEADERS)}")
    output.add_argument("--no-redact", action="store_true",
                        help="show credentials in headers as captured (prints a warning)")

    fleet = parser.add_argument_group("export (off by default; optional extras: pip install 'httptrace[metrics,otlp]')")
    fleet.add_argument("--metrics", type=_listen_address, metavar="ADDR:PORT",
                       help="serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. :9464); they count "
                            "every captured exchange, whatever the display filters show")
    fleet.add_argument("--metrics-max-routes", type=_int_in(1, None, "--metrics-max-routes"), default=500,
                       metavar="N", help="distinct http_route values per command and method (default 500); "
                                         "more become 'other'")
    fleet.add_argument("--otlp-endpoint", type=_otlp_url, metavar="URL",
                       help="export each shown exchange as an OpenTelemetry span over OTLP/HTTP, e.g. "
                            "http://collector:4318 (/v1/traces is added when the URL has no path)")

    misc = parser.add_argument_group("diagnostics")
    misc.add_argument("--check", action="store_true",
                      help="check that this host can run httptrace, then exit")
    misc.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                      help="diagnostics on stderr (default info)")
    misc.add_argument("--log-format", choices=LOG_FORMATS,
                      help="console (readable) or json (one object per line); default: console on a "
                           "terminal, json otherwise")
    misc.add_argument("--version", action="version", version=f"%(prog)s {httptrace_version()}")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.format is None:
        args.format = infer_format(args.output)
    return args


def infer_format(output: str | None) -> str:
    if output:
        lowered = output.lower()
        if lowered.endswith(".har"):
            return "har"
        if lowered.endswith((".jsonl", ".ndjson")):
            return "json"
    return "text"


def exchange_filter_from_args(args: argparse.Namespace) -> ExchangeFilter:
    return build_filter(methods=args.method or (), path=args.path, statuses=args.status or (),
                        min_latency_ms=args.min_latency, role=args.role)


# --- logging ----------------------------------------------------------------------

def _isatty(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class _RenderingHandler(logging.Handler):
    """Renders httptrace's log records with structlog processors, one line each on a stream."""

    def __init__(self, stream: IO[str], processors: list[Any]):
        super().__init__()
        self.stream = stream
        self.processors = processors

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = getattr(record, EVENT_ATTRIBUTE, None)
            event: Any = dict(fields) if fields is not None else {"event": record.getMessage()}
            method = record.levelname.lower()
            for processor in self.processors:
                event = processor(None, method, event)
            self.stream.write(f"{event}\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "info", stream: IO[str] | None = None, fmt: str | None = None) -> None:
    """httptrace's log records to `stream` (stderr by default): readable on a terminal, JSON otherwise,
    unless `fmt` ("console" or "json", --log-format) says which.

    The library only hands records to the `httptrace` logger of the logging module (see _log.py); the
    CLI is the one place that renders them, with this handler, and keeps them from the root logger."""
    stream = stream if stream is not None else sys.stderr
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console" or (fmt is None and _isatty(stream)):
        processors.append(structlog.dev.ConsoleRenderer(colors="NO_COLOR" not in os.environ))
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    logger = logging.getLogger("httptrace")
    for handler in [h for h in logger.handlers if isinstance(h, _RenderingHandler)]:
        logger.removeHandler(handler)   # configured again (tests do): one handler, the latest
    logger.addHandler(_RenderingHandler(stream, processors))
    logger.setLevel(level.upper())
    logger.propagate = False


# --- seams for tests: everything that needs root or compiled code -----------------

def _open_tracer(**kwargs: Any) -> Tracer:
    """The Tracer, imported late so --help and --version work without the compiled module."""
    from httptrace.tracer import Tracer
    return Tracer(**kwargs)


def _run_checks(programs: str | None = None) -> list[CheckResult]:
    """The host's checks, then loading and attaching the object as the tracer would."""
    from httptrace.checks import CheckResult, object_path, requested_programs, run_checks
    from httptrace.tracer import Tracer

    programs = requested_programs(programs)
    results = run_checks(programs)
    if not all(result.ok for result in results):
        return results
    try:
        with Tracer(ports=[1], programs=programs) as tracer:
            count, family = len(tracer.attached_programs), tracer.programs
            libraries, go_programs = tracer.tls_libraries, tracer.go_programs
    except Exception as exc:  # reported, not raised: this is a report
        return results + [CheckResult("objects", False, f"loading {object_path()} failed: {exc}")]
    tls = ", ".join(libraries) if libraries else "none found"
    return results + [CheckResult("objects", True, f"{object_path()}: {count} {family} programs loaded and "
                                                   f"attached; TLS libraries probed: {tls}"),
                      CheckResult("go tls", True, _describe_go_programs(go_programs))]


def _describe_go_programs(programs: list["GoProgram"]) -> str:
    """Go programs running now: which are probed, which are not and why (gotls.GoProgram)."""
    if not programs:
        return "no Go programs running"
    probed = [f"{p.path} ({p.detail})" for p in programs if p.probed]
    skipped = [f"{p.path} ({p.detail})" for p in programs if not p.probed]
    return (f"{len(programs)} Go program(s) found; probed: {'; '.join(probed) or 'none'}"
            + (f"; not probed: {'; '.join(skipped)}" if skipped else ""))


# --- output file ------------------------------------------------------------------

class Output:
    """Where exchanges go: standard output, or a file opened before the capture starts (so
    an unwritable path fails fast) but emptied only once it has started, so a failed start
    never wipes an earlier capture.  Files are private: created 0600, an existing file is
    narrowed to 0600 before anything is written, since captures hold other people's data."""

    def __init__(self, path: str | None, binary: bool):
        self.path = None if path in (None, "-") else path
        self.created = False
        if self.path is None:
            self.stream: IO[Any] = sys.stdout.buffer if binary else sys.stdout
            return
        flags = os.O_WRONLY | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            self.created = True
        except FileExistsError:
            fd = os.open(self.path, flags)
        try:
            self.regular = stat.S_ISREG(os.fstat(fd).st_mode)
            if self.regular:        # never chmod a tty or /dev/null
                os.fchmod(fd, 0o600)
            self.stream = (os.fdopen(fd, "wb") if binary else
                           os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n"))
        except BaseException:
            os.close(fd)
            raise

    @property
    def is_stdout(self) -> bool:
        return self.path is None

    def begin(self) -> None:
        """The capture is running: drop what an existing file held."""
        if self.path is not None and self.regular:
            self.stream.seek(0)
            self.stream.truncate()

    def close(self, discard: bool = False) -> None:
        """Close a file we opened; with discard, remove it if we created it (nothing was captured)."""
        if self.path is None:
            return
        try:
            self.stream.close()
        except OSError:
            pass
        if discard and self.created:
            try:
                os.unlink(self.path)
            except OSError:
                pass


# --- the capture loop -------------------------------------------------------------

# Shown first in the summary, in this order; other keys from stats() follow sorted.
_SUMMARY_KEYS = ("exchanges", "bytes", "connections", "drops", "skipped_requests", "skipped_responses", "gaps",
                 "truncated", "parse_errors", "events")


def fail(problem: str, fix: str = "") -> int:
    """The one line a user sees for a problem they can fix."""
    print(f"httptrace: error: {problem}" + (f" ({fix})" if fix else ""), file=sys.stderr, flush=True)
    return EXIT_ERROR


class ExchangeSource(Protocol):
    """What a capture needs of a Tracer (the unit tests hand in a fake)."""

    def exchange_batches(self) -> Iterator[list[Exchange]]: ...
    def stop(self) -> None: ...
    def stats(self) -> dict[str, int]: ...


class CaptureRun:
    """One capture: counts what was shown, stops on signals/count/duration, summarises."""

    def __init__(self, tracer: ExchangeSource, writer: ExchangeWriter, exchange_filter: ExchangeFilter, count: int | None,
                 duration: float | None, summary_stream: IO[str], scope: Callable[[Exchange], bool] | None = None,
                 observers: Iterable[Callable[[Exchange], None]] = (),
                 exporters: Iterable[Callable[[Exchange], None]] = (),
                 extra_stats: Iterable[Callable[[], dict[str, int]]] = (),
                 on_batch: Iterable[Callable[[], None]] = (), on_stop: Iterable[Callable[[], None]] = ()) -> None:
        """scope: the --container filter (None: all); observers see every exchange in scope (metrics,
        whatever the display filters say), exporters every exchange shown (spans); extra_stats:
        callables returning counters for the summary."""
        self.scope = scope
        self.observers = tuple(observers)
        self.exporters = tuple(exporters)
        self.extra_stats = tuple(extra_stats)
        self.on_batch = tuple(on_batch)
        self.on_stop = tuple(on_stop)   # before the summary: stages flush, so it has their final counts
        self.tracer = tracer
        self.writer = writer
        self.keep = exchange_filter
        self.count = count
        self.duration = duration
        self.summary_stream = summary_stream
        self.shown = 0
        self.stopping = False
        self.started = time.monotonic()

    def stop(self) -> None:
        self.stopping = True
        self.tracer.stop()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:   # a second Ctrl-C: the user does not want to wait for a clean stop
            raise KeyboardInterrupt
        self.stop()

    def _on_summary_signal(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.print_summary()
        except (RuntimeError, OSError):   # re-entrant write on stderr: skip this one
            pass

    def summary_line(self) -> str:
        stats = _safe_stats(self.tracer)
        for more in self.extra_stats:
            stats.update(more())
        # The headline counters always; the tracer's finer-grained ones only when they happened.
        keys = [k for k in _SUMMARY_KEYS if k in stats] + sorted(
            k for k in stats if k not in _SUMMARY_KEYS and stats[k])
        fields = [f"shown={self.shown}", *(f"{k}={stats[k]}" for k in keys),
                  f"elapsed={time.monotonic() - self.started:.1f}s"]
        return "httptrace summary: " + " ".join(fields)

    def print_summary(self) -> None:
        try:
            print(self.summary_line(), file=self.summary_stream, flush=True)
        except OSError:   # stderr gone with the terminal (SIGHUP): nothing left to tell
            pass

    def _write(self, batch: list[Exchange]) -> bool:
        """Write the exchanges the filter keeps, then flush once; True when --count is reached."""
        if self.scope is not None or self.observers or self.exporters or self.on_batch:
            return self._write_staged(batch)
        keep, write, count = self.keep, self.writer.write, self.count
        done = False
        for exchange in batch:
            if keep(exchange):
                write(exchange)
                self.shown += 1
                if count is not None and self.shown >= count:
                    done = True
                    break
        if batch:
            self.writer.flush()
        return done

    def _write_staged(self, batch: list[Exchange]) -> bool:
        """_write with the optional stages: --container scope, metrics, span export."""
        scope, observers, exporters = self.scope, self.observers, self.exporters
        keep, write, count = self.keep, self.writer.write, self.count
        done = False
        for exchange in batch:
            if scope is not None and not scope(exchange):
                continue
            for observe in observers:
                observe(exchange)
            if done or not keep(exchange):
                continue   # after --count is reached, metrics still see the rest of this batch
            write(exchange)
            for export in exporters:
                export(exchange)
            self.shown += 1
            if count is not None and self.shown >= count:
                done = True
        if batch:
            self.writer.flush()
        for hook in self.on_batch:
            hook()
        return done

    def run(self) -> int:
        # Start-up objects (modules, the loaded object) never die: keep the collector from rescanning them
        # for every few thousand exchanges.
        gc.freeze()
        # Exchanges hold no reference cycles, so they are freed as soon as they are written; but a batch
        # of a few thousand alive at once makes the default threshold (700) run the collector over them
        # again and again (about 10% of the agent's CPU). Connections that end do leave cycles: the
        # collector still runs, every few tens of thousands of allocations.
        gc_thresholds = gc.get_threshold()
        gc.set_threshold(50_000, 20, 20)
        _keep_freed_memory()
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous: dict[signal.Signals, Any] = {}   # the handlers to put back
        if in_main_thread:
            # SIGHUP too: a dropped ssh session must still leave a complete HAR file.
            for signum, handler in ((signal.SIGINT, self._on_stop_signal),
                                    (signal.SIGTERM, self._on_stop_signal),
                                    (signal.SIGHUP, self._on_stop_signal),
                                    (signal.SIGUSR1, self._on_summary_signal)):
                if signal.getsignal(signum) is signal.SIG_IGN:   # e.g. under nohup: keep ignoring
                    continue
                previous[signum] = signal.signal(signum, handler)
        timer = None
        if self.duration:
            timer = threading.Timer(self.duration, self.stop)
            timer.daemon = True
            timer.start()
        write_error: OSError | None = None
        try:
            for batch in self.tracer.exchange_batches():
                if self._write(batch):
                    break
        except BrokenPipeError:   # `httptrace | head`: the reader is gone, stop quietly
            _silence_stdout()
        except OSError as exc:   # disk full, file system gone...: reported after the summary
            write_error = exc
        finally:
            self.stopping = True
            self.tracer.stop()
            if timer is not None:
                timer.cancel()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            gc.set_threshold(*gc_thresholds)
            for hook in self.on_stop:
                hook()
            self.print_summary()
        final = _safe_stats(self.tracer)
        if final.get("skipped_requests"):
            log.warning("overload: exchanges were not captured (skipped whole in the kernel while the agent "
                        "was behind; those captured are complete)", not_captured=final["skipped_requests"],
                        fix="narrow with --pid/--port")
        drops = final.get("drops")
        if drops:
            log.warning("events were dropped: some exchanges are missing or flagged 'gap'",
                        drops=drops, fix="raise --ring-buffer-size or narrow with --pid/--port")
        if write_error is not None:
            return fail(f"cannot write output: {write_error.strerror or write_error}",
                        "check free space and the -o path")
        return EXIT_OK


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _keep_freed_memory() -> None:
    """By default glibc gives memory back to the kernel as soon as 128 KiB are free at the top of the
    heap, and serves blocks over 128 KiB with mmap: every copy of a 10 MB body (payload pieces, the
    joined body, its text, the JSON) then faults in ~2,500 fresh pages. That was 3/4 of the agent's
    CPU on large bodies. Keep up to 64 MiB of freed heap for reuse, and take blocks up to 32 MiB
    from the heap: bodies cost ~4x less, for ~40 MB more RSS once large bodies have been seen."""
    try:
        mallopt = ctypes.CDLL(None).mallopt   # glibc (musl's is a no-op)
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _safe_stats(tracer: ExchangeSource) -> dict[str, int]:
    try:
        return dict(tracer.stats())
    except Exception as exc:  # the summary must not hide the real exit reason
        log.debug("tracer stats unavailable", error=str(exc))
        return {}


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def run_check_command(out: IO[str], args: argparse.Namespace) -> int:
    try:
        results = _run_checks(args.programs)
    except ImportError as exc:
        return fail(f"environment checks are unavailable: {exc}", "reinstall httptrace")
    except HttptraceError as exc:
        return fail(str(exc))
    failed = 0
    for result in results:
        failed += not result.ok
        fix = getattr(result, "fix", "")
        line = f"{'ok  ' if result.ok else 'FAIL'} {result.name}: {result.detail}"
        print(line + (f" ({fix})" if fix and not result.ok else ""), file=out)
    print(f"{len(results) - failed}/{len(results)} checks passed", file=out, flush=True)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


class Stages:
    """The optional export stages (--metrics, --otlp-endpoint): started before the capture, so a port
    in use or a missing package fails before anything is attached; closed after it."""

    def __init__(self) -> None:
        self.metrics: Metrics | None = None
        self.spans: SpanExport | None = None

    def start(self, args: argparse.Namespace, redactor: Redactor) -> int | None:
        """None when started, else the exit code of the one-line error already printed."""
        if args.metrics is not None:
            addr, port = args.metrics
            try:
                from httptrace.metrics import Metrics
                self.metrics = Metrics(max_routes=args.metrics_max_routes)
            except ImportError as exc:
                return fail(f"--metrics needs the prometheus-client package ({exc.name or exc} is missing)",
                            "pip install 'httptrace[metrics]'")
            try:
                self.metrics.serve(addr, port)
            except OSError as exc:
                return fail(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}",
                            "choose another --metrics ADDR:PORT")
            log.info("serving metrics", url=f"http://{addr}:{port}/metrics")
        if args.otlp_endpoint is not None:
            try:
                from httptrace.otel import SpanExport
                self.spans = SpanExport(args.otlp_endpoint, redactor=redactor)
            except ImportError as exc:
                self.close()
                return fail(f"--otlp-endpoint needs the OpenTelemetry SDK and OTLP exporter "
                            f"({exc.name or exc} is missing)", "pip install 'httptrace[otlp]'")
            # The SDK's own warnings are plain-text lines amid ours; export failures are logged by the stage.
            logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
            log.info("exporting spans", endpoint=self.spans.endpoint)
        return None

    def wiring(self, tracer: ExchangeSource) -> dict[str, Any]:
        """CaptureRun's keyword arguments for the stages that run."""
        extra_stats = [self.spans.stats] if self.spans is not None else []
        wiring: dict[str, Any] = {"extra_stats": extra_stats, "on_stop": [self.close],
                                  "exporters": [self.spans.submit] if self.spans is not None else []}
        if self.metrics is not None:
            def stats() -> dict[str, int]:
                combined = _safe_stats(tracer)
                for more in extra_stats:
                    combined.update(more())
                return combined
            self.metrics.set_stats_source(stats)
            wiring["observers"] = [self.metrics.observe]
            wiring["on_batch"] = [self.metrics.refresh]
        return wiring

    def close(self) -> None:
        """Idempotent: called before the summary, and again on the way out."""
        if self.spans is not None and not self.spans.closed:
            self.spans.close()
            if self.spans.stats()["otlp_dropped"]:
                log.warning("spans were not delivered", **self.spans.stats(),
                            fix="check --otlp-endpoint, or that the collector keeps up")
        if self.metrics is not None:
            self.metrics.close()


def _describe_error(exc: HttptraceError) -> tuple[str, str]:
    if isinstance(exc, EnvironmentProblem):
        return exc.problem, exc.fix
    if isinstance(exc, LibbpfError):
        return str(exc), "run httptrace --check for details"
    return str(exc), ""


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("httptrace: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def _main(argv: list[str] | None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:   # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    configure_logging(args.log_level, sys.stderr, args.log_format)

    if args.check:
        return run_check_command(sys.stdout, args)

    try:
        exchange_filter = exchange_filter_from_args(args)
    except FilterSpecError as exc:   # already validated by argparse; kept as a safety net
        return fail(str(exc), "see httptrace --help")

    if args.no_redact:
        log.warning("redaction disabled: credentials in headers will be written as captured",
                    headers=", ".join(DEFAULT_REDACTED_HEADERS + tuple(args.redact)))
    redactor = Redactor(args.redact, enabled=not args.no_redact)

    comm = args.comm
    if comm is not None and len(comm) >= TASK_COMM_LEN:
        comm = comm[:TASK_COMM_LEN - 1]
        log.warning("--comm longer than the kernel keeps; matching the first 15 characters", comm=comm)

    stages = Stages()
    problem = stages.start(args, redactor)
    if problem is not None:
        return problem

    try:
        output = Output(args.output, binary=args.format == "har")
    except OSError as exc:
        stages.close()
        return fail(f"cannot open output file {args.output!r}: {exc.strerror or exc}",
                    "choose a writable path with -o")
    if output.is_stdout and args.format == "text" and hasattr(output.stream, "reconfigure"):
        output.stream.reconfigure(errors="backslashreplace")   # header bytes are latin-1, the terminal may not be
    color = (args.format == "text" and output.is_stdout and _isatty(output.stream)
             and "NO_COLOR" not in os.environ)
    options = OutputOptions(redactor=redactor, include_bodies=args.include_bodies,
                            verbosity=args.verbose, color=color)

    tracer_options: dict[str, Any] = dict(pids=args.pid or None, ports=args.port or None, comm=comm,
                                          ring_buffer_size=args.ring_buffer_size, tls=args.tls,
                                          programs=args.programs)
    if args.max_body is not None:   # otherwise the Tracer's own default
        tracer_options["max_body"] = args.max_body
    writer = None
    try:
        with _open_tracer(**tracer_options) as tracer:
            try:
                output.begin()
                writer = make_writer(args.format, output.stream, options)
            except OSError as exc:   # emptying the file, or writing the HAR header
                return fail(f"cannot write output: {exc.strerror or exc}", "check free space and the -o path")
            log.info("capture started", format=args.format, output=args.output or "stdout")
            return CaptureRun(tracer, writer, exchange_filter, args.count, args.duration, sys.stderr,
                              scope=container_scope(args.container), **stages.wiring(tracer)).run()
    except HttptraceError as exc:
        return fail(*_describe_error(exc))
    finally:
        stages.close()
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        output.close(discard=writer is None)
