"""The fleet options as a user meets them: clear one-line errors, --log-format, parsing."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

from httptrace import cli
from httptrace._log import get_logger

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where `module` cannot be imported (as without the extra)."""
    code = (f"import sys; sys.modules[{module!r}] = None; from httptrace.cli import main; "
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module, args, extra", [
    ("prometheus_client", ["--metrics", "127.0.0.1:9"], "httptrace[metrics]"),
    ("opentelemetry.sdk", ["--otlp-endpoint", "http://127.0.0.1:4318"], "httptrace[otlp]"),
])
def test_a_flag_without_its_extra_is_one_clear_line(module, args, extra):
    result = _run_without(module, *args, "-c", "1")
    assert result.returncode == cli.EXIT_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and extra in lines[0] and args[0] in lines[0], result.stderr


@pytest.mark.parametrize("args, message", [
    (["--metrics", "9464"], "ADDR:PORT"),
    (["--otlp-endpoint", "collector:4318"], "http://"),
    (["--container", "not-hex"], "hex digits"),
])
def test_bad_values_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(args)
    assert exc.value.code == cli.EXIT_ERROR and message in capsys.readouterr().err


def test_values_are_parsed():
    args = cli.parse_args(["--metrics", ":9464", "--otlp-endpoint", "http://c:4318", "--container", "ABC1",
                           "--log-format", "json"])
    assert args.metrics == ("0.0.0.0", 9464)
    assert args.otlp_endpoint == "http://c:4318/v1/traces"
    assert args.container == ["abc1"] and args.log_format == "json"


def _log_on_a_terminal(fmt):
    """What one log event looks like on a real pseudo-terminal."""
    controller, terminal = pty.openpty()
    stream = os.fdopen(terminal, "w")
    try:
        cli.configure_logging("info", stream, fmt)
        get_logger("httptrace.test").info("attached", links=3)
        stream.flush()
        return os.read(controller, 65536).decode()
    finally:
        stream.close()
        os.close(controller)
        cli.configure_logging("info", sys.stderr)


def test_log_format_on_a_terminal():
    console = _log_on_a_terminal(None)
    assert "attached" in console and not console.lstrip().startswith("{")
    as_json = json.loads(_log_on_a_terminal("json").strip())
    assert as_json["event"] == "attached" and as_json["links"] == 3


def test_log_format_console_in_a_pipe(tmp_path):
    path = tmp_path / "log"
    with open(path, "w") as stream:
        cli.configure_logging("info", stream, "console")
        get_logger("httptrace.test").info("attached", links=3)
    cli.configure_logging("info", sys.stderr)
    text = path.read_text()
    assert "attached" in text and "links" in text and not text.startswith("{")
