"""The wheel is self-contained: installed in a fresh venv it loads its own libbpf and eBPF objects, with
no clang, no bpftool and no system libbpf on the PATH or in use."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    subprocess.run(["make", "-s", "wheel"], cwd=ROOT, check=True, capture_output=True)
    (wheel,) = glob.glob(os.path.join(ROOT, "wheelhouse", "httptrace-*.whl"))
    assert "manylinux" in os.path.basename(wheel), wheel
    venv = tmp_path_factory.mktemp("wheel-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", wheel], check=True, capture_output=True)
    return venv


def clean_env(venv, tmp_path):
    """A PATH with the venv and nothing else: no clang, no bpftool, no compiler."""
    assert shutil.which("clang-16"), "the build machine should have clang; this test removes it"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "HTTPTRACE"))}
    env["PATH"] = str(venv / "bin")
    return env


def test_wheel_runs_check_without_clang_or_bpftool(wheel_venv, tmp_path):
    env = clean_env(wheel_venv, tmp_path)
    result = subprocess.run([str(wheel_venv / "bin" / "python"), "-m", "httptrace", "--check"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "programs loaded and attached" in result.stdout


PROBE = """
import httptrace, httptrace._libbpf
from importlib import resources
obj = resources.files("httptrace.bpf") / "httptrace.bpf.o"
print("object", obj.is_file(), obj)
print("package", httptrace.__file__)
print(open("/proc/self/maps").read())
"""


def test_wheel_uses_its_bundled_libbpf_and_objects(wheel_venv, tmp_path):
    env = clean_env(wheel_venv, tmp_path)
    out = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", PROBE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert f"object True {wheel_venv}" in out
    assert f"package {wheel_venv}" in out
    assert "httptrace.libs/libbpf" in out
    assert "/usr/lib/x86_64-linux-gnu/libbpf.so" not in out
