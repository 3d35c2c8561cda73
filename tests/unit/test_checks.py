"""Choosing the program family from what the kernel's helpers are (the probes themselves run in e2e and in
the kernel guests)."""
import pytest

from httptrace import checks
from httptrace.errors import EnvironmentProblem


@pytest.fixture
def kernel_lacks(monkeypatch):
    def set_missing(*names):
        monkeypatch.setattr(checks, "missing_fast_helpers", lambda: list(names))
    return set_missing


def test_auto_takes_fast_where_every_helper_is_there(kernel_lacks):
    kernel_lacks()
    family, why = checks.choose_programs("auto")
    assert family == "fast" and "bpf_loop" in why


def test_auto_falls_back_to_compat_and_names_what_is_missing(kernel_lacks):
    kernel_lacks("bpf_loop", "bpf_task_pt_regs")
    assert checks.choose_programs("auto") == ("compat", "kernel lacks bpf_loop, bpf_task_pt_regs")
    assert checks.check_programs("auto").detail == "compat (kernel lacks bpf_loop, bpf_task_pt_regs)"


def test_forced_fast_on_a_kernel_without_its_helpers_is_one_readable_problem(kernel_lacks):
    kernel_lacks("bpf_loop")
    with pytest.raises(EnvironmentProblem, match="need bpf_loop, which this kernel lacks"):
        checks.choose_programs("fast")
    result = checks.check_programs("fast")
    assert not result.ok and "--programs compat" in result.fix


def test_compat_is_taken_when_asked_even_where_fast_would_load(kernel_lacks):
    kernel_lacks()
    assert checks.choose_programs("compat") == ("compat", "asked for")


def test_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="auto, fast, compat"):
        checks.choose_programs("turbo")


def test_the_kernel_check_reports_the_release_without_judging_it():
    result = checks.check_kernel()
    assert result.ok and result.detail.startswith("Linux ")


@pytest.mark.parametrize("machine, name", [("x86_64", "x86-64"), ("aarch64", "arm64")])
def test_both_arches_are_known(machine, name):
    result = checks.check_arch(machine)
    assert result.ok and result.detail == f"{name} ({machine})"


def test_another_cpu_is_one_readable_problem():
    result = checks.check_arch("riscv64")
    assert not result.ok and "riscv64" in result.detail and "arm64" in result.fix
