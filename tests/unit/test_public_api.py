"""`import httptrace` as a library user meets it: one namespace, loaded lazily, typed."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import httptrace

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_public_name_resolves_to_the_object_of_its_module():
    from httptrace import errors, events, exchange, sessions

    assert set(httptrace.__all__) >= {"Tracer", "Exchange", "Message", "Connection", "Endpoint", "Role", "Flag",
                                      "Open", "Data", "Close", "Reassembler", "HttptraceError",
                                      "EnvironmentProblem", "LibbpfError", "__version__"}
    assert httptrace.Exchange is exchange.Exchange and httptrace.Reassembler is sessions.Reassembler
    assert httptrace.Open is events.Open and httptrace.LibbpfError is errors.LibbpfError
    assert re.fullmatch(r"\d+\.\d+\.\d+.*|0\+unknown", httptrace.__version__)
    assert set(httptrace.__all__) <= set(dir(httptrace))


def test_import_loads_neither_the_tracer_nor_the_reassembler():
    script = ("import sys, httptrace; "
              "print(sorted(m for m in ('httptrace.tracer', 'httptrace.sessions', 'httptrace.libbpf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out == "[]\n"


def test_an_unknown_name_is_an_attribute_error():
    try:
        httptrace.Nope  # type: ignore[attr-defined]
    except AttributeError as exc:
        assert "Nope" in str(exc)
    else:
        raise AssertionError("httptrace.Nope resolved")


def examples() -> dict[str, str]:
    text = (REPO / "docs" / "api.md").read_text()
    return dict(re.findall(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", text, re.S))


def mypy(tmp_path: pathlib.Path, files: dict[str, str]) -> tuple[int, str]:
    """mypy --strict on `files` as a user's code importing this checkout (with its pyproject settings)."""
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    env = dict(os.environ, MYPYPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                             "--cache-dir", str(tmp_path / "cache"), *sorted(files)],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def test_the_docs_examples_type_check_and_the_api_is_not_any(tmp_path):
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())   # the _libbpf override
    files = {f"example_{name.replace('-', '_')}.py": code for name, code in examples().items()}
    code, output = mypy(tmp_path, files)
    assert code == 0, output
    # Were Tracer or Exchange Any (a lazy import that lost its types), these would pass too.
    wrong = ("from httptrace import Tracer\n"
             "with Tracer(ports=[1]) as tracer:\n"
             "    for exchange in tracer.exchanges(timeout=1):\n"
             "        status: str = exchange.response.status\n")
    code, output = mypy(tmp_path, {"wrong.py": wrong})
    assert code == 1
    assert 'Item "None" of "Message | None" has no attribute "status"' in output, output
    assert re.search(r'expression has type "int \|[^"]*", variable has type "str"', output), output
