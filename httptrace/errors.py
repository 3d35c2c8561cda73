"""Errors a user can act on: one line naming the problem and one naming the fix."""
from __future__ import annotations


class HttptraceError(Exception):
    """Base for every error httptrace raises on purpose."""


class EnvironmentProblem(HttptraceError):
    """The host cannot run the tracer as asked (privileges, BTF, tracefs, kernel too old...)."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})" if self.fix else self.problem


class LibbpfError(HttptraceError):
    """A libbpf call failed: which step, errno and libbpf's own words."""

    def __init__(self, step: str, errno: int, message: str = ""):
        self.step = step
        self.errno = errno
        self.message = message
        self.verifier_log: list[str] = []   # a failed load: libbpf's last warnings (the verifier's words)
        super().__init__(f"failed to {step}: {message or 'error'} (errno {errno})")
