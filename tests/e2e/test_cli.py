"""`python -m httptrace` as a person meets it: live lines, JSON/HAR from real traffic, redaction, errors."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from .conftest import HERE

ROOT = os.path.dirname(os.path.dirname(HERE))
HTTPTRACE = [sys.executable, "-m", "httptrace"]
SECRET = "Bearer s3cr3t-t0ken-do-not-leak"


def start_cli(*args: str, **kwargs) -> subprocess.Popen:
    proc = subprocess.Popen([*HTTPTRACE, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)
    proc.startup_log = wait_attached(proc)
    return proc


def wait_attached(proc, timeout=15.0) -> str:
    """The CLI logs an 'attached' event on stderr once every hook is in place; returns stderr until then."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "attached" in line:
            return seen
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"httptrace did not attach: {seen}")


def curl_n(port: int, n: int, *extra: str) -> None:
    for i in range(n):
        subprocess.run(["curl", "-sS", "-o", "/dev/null", *extra, f"http://127.0.0.1:{port}/echo?i={i}"], check=True)


def test_json_lines_match_what_curl_saw(nginx):
    _, port, _ = nginx
    proc = start_cli("--port", str(port), "--role", "server", "--format", "json", "-c", "3")
    curl_n(port, 3, "-H", "X-Test: yes")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["request"]["target"] for x in lines] == ["/echo?i=0", "/echo?i=1", "/echo?i=2"]
    for i, x in enumerate(lines):
        assert x["role"] == "server" and x["comm"] == "nginx" and x["local"]["port"] == port
        assert x["request"]["method"] == "GET" and ["X-Test", "yes"] in x["request"]["headers"]
        assert x["response"]["status"] == 200 and x["response"]["body"] == f"GET /echo?i={i}\n"
        assert x["response"]["body_size"] == len(x["response"]["body"]) and x["flags"] == []
    assert "exchanges" in err  # the summary


@pytest.mark.parametrize("fmt", ["json", "har", "text"])
def test_authorization_is_redacted_unless_no_redact(nginx, tmp_path, fmt):
    _, port, _ = nginx
    base = ["--port", str(port), "--role", "client", "--format", fmt, "-c", "1"] + (["-v"] if fmt == "text" else [])

    redacted = tmp_path / f"redacted.{fmt}"
    proc = start_cli(*base, "-o", str(redacted))
    curl_n(port, 1, "-H", f"Authorization: {SECRET}", "-H", "Cookie: session=abcdef123")
    proc.communicate(timeout=20)
    assert proc.returncode == 0
    captured = redacted.read_text()
    assert "/echo?i=0" in captured
    assert "s3cr3t" not in captured and "abcdef123" not in captured
    assert oct(redacted.stat().st_mode & 0o777) == "0o600"

    raw = tmp_path / f"raw.{fmt}"
    proc = start_cli(*base, "--no-redact", "-o", str(raw))
    curl_n(port, 1, "-H", f"Authorization: {SECRET}")
    _, err = proc.communicate(timeout=20)
    assert SECRET in raw.read_text()
    assert "redaction disabled" in proc.startup_log  # the warning, logged before the tracer attached


def test_har_from_real_traffic_is_schema_valid(nginx, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    _, port, www = nginx
    (www / "page.html").write_bytes(b"<html>hi</html>\n")
    out_file = tmp_path / "capture.har"
    proc = start_cli("--port", str(port), "--role", "server", "--format", "har", "-c", "2", "-o", str(out_file))
    subprocess.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{port}/copied/page.html"], check=True)
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-d", "a=1", f"http://127.0.0.1:{port}/echo"], check=True)
    proc.communicate(timeout=20)
    har = json.loads(out_file.read_text())
    schema = json.loads(open(os.path.join(ROOT, "tests", "unit", "har-1.2.schema.json")).read())
    jsonschema.validate(har, schema)
    entries = har["log"]["entries"]
    assert [e["request"]["url"] for e in entries] == [f"http://127.0.0.1:{port}/copied/page.html",
                                                      f"http://127.0.0.1:{port}/echo"]
    assert entries[0]["response"]["content"]["text"] == "<html>hi</html>\n"
    assert entries[1]["request"]["method"] == "POST"


def test_har_is_valid_after_sigterm_mid_capture(nginx, tmp_path):
    _, port, _ = nginx
    out_file = tmp_path / "capture.har"
    proc = start_cli("--port", str(port), "--role", "server", "--format", "har", "-o", str(out_file))
    curl_n(port, 3)
    time.sleep(0.5)
    proc.terminate()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    har = json.loads(out_file.read_text())
    assert len(har["log"]["entries"]) == 3


def test_text_view_prints_each_exchange_live(nginx):
    """On a terminal, each exchange's line appears while the tracer is still running."""
    _, port, _ = nginx
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*HTTPTRACE, "--port", str(port), "--role", "server"], cwd=ROOT, stdin=terminal,
                            stdout=terminal, stderr=subprocess.PIPE, text=True)
    os.close(terminal)
    try:
        wait_attached(proc)
        curl_n(port, 1)
        screen = b""
        deadline = time.monotonic() + 10
        while b"/echo?i=0" not in screen and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.2)[0]:
                screen += os.read(controller, 65536)
        assert proc.poll() is None, "the tracer should still be running"
        line = next(l for l in screen.decode().splitlines() if "/echo?i=0" in l)
        assert "nginx" in line and "GET" in line and "200" in line
        assert "\x1b[" in line  # colour, since this is a TTY
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(controller)


def run_cli(*args: str, env_extra=None, preexec=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([*HTTPTRACE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("case, args, env, expected", [
    ("broken object", ["-c", "1"], {"HTTPTRACE_BPF_OBJECT": "/nonexistent/httptrace.bpf.o"}, "BPF object"),
    ("missing BTF", ["-c", "1"], {"HTTPTRACE_BTF": "/nonexistent/vmlinux"}, "no kernel BTF"),
    ("bad regex", ["--path", "("], {}, "regular expression"),
    ("unwritable output", ["-o", "/proc/httptrace-cannot-write-here"], {}, "/proc/httptrace-cannot-write-here"),
])
def test_errors_are_one_readable_line(case, args, env, expected):
    result = run_cli(*args, env_extra=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected in errors[0], result.stderr


def readable_copy_for_nobody(tmp_path) -> str:
    """httptrace and its dependencies copied where an unprivileged user can read them (the checkout
    may live under root's 0700 home)."""
    import importlib
    import shutil as sh

    site = tmp_path / "site"
    for name in ("httptrace", "structlog", "cffi", "elftools", "_cffi_backend"):
        module = importlib.import_module(name)
        src = module.__file__
        if os.path.basename(src) == "__init__.py":
            sh.copytree(os.path.dirname(src), site / name, ignore=sh.ignore_patterns("__pycache__"))
        else:
            os.makedirs(site, exist_ok=True)
            sh.copy2(src, site)
    for path in [tmp_path, *tmp_path.parents]:
        if str(path) in ("/", "/tmp"):
            break
        os.chmod(path, 0o755)
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    return str(site)


def test_non_root_user_gets_one_readable_line(tmp_path):
    site = readable_copy_for_nobody(tmp_path)
    python = os.path.realpath(sys.executable)
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             python, "-m", "httptrace", "-c", "1"], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": site}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "CAP_BPF" in result.stderr and "root" in result.stderr
