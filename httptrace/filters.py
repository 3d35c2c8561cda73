"""User-space exchange filters: --method, --path, --status (HTTP, or gRPC with grpc:N), --min-latency, --role.

The kernel already narrowed capture by pid, comm and port (the Tracer does that);
these look at what only a parsed exchange knows.  Parsing of the option values lives
here too, so the CLI and tests share one definition of "5xx" or "GET,POST".
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from httptrace.exchange import Exchange, Role


class FilterSpecError(ValueError):
    """An option value that cannot be turned into a filter; the message says why."""


def split_list(values: Iterable[str]) -> list[str]:
    """Repeatable options also accept comma lists: ["GET,POST", "PUT"] -> ["GET", "POST", "PUT"]."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_methods(values: Iterable[str]) -> frozenset[str]:
    methods = frozenset(m.upper() for m in split_list(values))
    for method in methods:
        if not re.fullmatch(r"[A-Z0-9!#$%&'*+.^_`|~-]+", method):
            raise FilterSpecError(f"invalid HTTP method {method!r}")
    return methods


def parse_statuses(values: Iterable[str]) -> tuple[frozenset[int], frozenset[int]]:
    """"404", "5xx", "2xx,404" -> (exact codes, classes as their hundreds digit).  gRPC statuses
    ("grpc:14") are checked here too, and returned by parse_grpc_statuses."""
    exact: set[int] = set()
    classes: set[int] = set()
    parse_grpc_statuses(values)
    for item in split_list(values):
        lowered = item.lower()
        if lowered.startswith("grpc:"):
            continue
        if re.fullmatch(r"[1-5]xx", lowered):
            classes.add(int(lowered[0]))
        elif re.fullmatch(r"[1-9][0-9]{2}", item):
            exact.add(int(item))
        else:
            raise FilterSpecError(f"invalid status {item!r} (use a code like 404 or a class like 5xx)")
    return frozenset(exact), frozenset(classes)


def parse_grpc_statuses(values: Iterable[str]) -> frozenset[int]:
    """"grpc:14", "grpc:0,grpc:4" -> gRPC status codes (0-16, or any code a server sends, < 1000)."""
    codes: set[int] = set()
    for item in split_list(values):
        if item.lower().startswith("grpc:"):
            code = item[5:].strip()
            if not re.fullmatch(r"[0-9]{1,3}", code):
                raise FilterSpecError(f"invalid gRPC status {item!r} (use a code like grpc:14)")
            codes.add(int(code))
    return frozenset(codes)


def compile_path_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise FilterSpecError(f"invalid regular expression {pattern!r}: {exc}") from None


def parse_role(value: str) -> Role:
    try:
        role = Role(value.strip().lower())
    except ValueError:
        role = None
    if role not in (Role.CLIENT, Role.SERVER):
        raise FilterSpecError(f"invalid role {value!r} (use client or server)")
    return role


@dataclass(frozen=True)
class ExchangeFilter:
    """A predicate over Exchanges; every criterion left as None accepts everything.

    Exchanges without a response have no status and no latency: a --status or
    --min-latency filter therefore drops them.
    """

    methods: frozenset[str] | None = None
    path: re.Pattern[str] | None = None          # searched in the request target, query included
    exact_statuses: frozenset[int] = frozenset()
    status_classes: frozenset[int] = frozenset()
    min_latency_ns: int | None = None
    role: Role | None = None
    grpc_statuses: frozenset[int] = frozenset()   # --status grpc:N; with HTTP statuses, either may match

    @property
    def accepts_everything(self) -> bool:
        return (self.methods is None and self.path is None and not self.exact_statuses
                and not self.status_classes and self.min_latency_ns is None and self.role is None
                and not self.grpc_statuses)

    def __call__(self, exchange: Exchange) -> bool:
        if self.role is not None and exchange.connection.role is not self.role:
            return False
        request = exchange.request
        if self.methods is not None and (request.method or "").upper() not in self.methods:
            return False
        if self.path is not None and self.path.search(request.target or "") is None:
            return False
        if self.exact_statuses or self.status_classes or self.grpc_statuses:
            response = exchange.response
            status = response.status if response is not None else None
            grpc = exchange.grpc
            if not ((status is not None and (status in self.exact_statuses or status // 100 in self.status_classes))
                    or (grpc is not None and grpc.status is not None and grpc.status in self.grpc_statuses)):
                return False
        if self.min_latency_ns is not None:
            latency = exchange.latency_ns
            if latency is None or latency < self.min_latency_ns:
                return False
        return True


def build_filter(*, methods: Iterable[str] = (), path: str | re.Pattern[str] | None = None,
                 statuses: Iterable[str] = (), min_latency_ms: float | None = None,
                 role: str | Role | None = None) -> ExchangeFilter:
    """Build a filter from option values as the user typed them; raises FilterSpecError."""
    method_set = parse_methods(methods)
    statuses = list(statuses)
    exact, classes = parse_statuses(statuses)
    if min_latency_ms is not None and min_latency_ms < 0:
        raise FilterSpecError(f"invalid minimum latency {min_latency_ms} ms (must be >= 0)")
    return ExchangeFilter(
        methods=method_set or None,
        path=compile_path_regex(path) if isinstance(path, str) else path,
        exact_statuses=exact,
        status_classes=classes,
        min_latency_ns=None if min_latency_ms is None else round(min_latency_ms * 1_000_000),
        role=parse_role(role.value if isinstance(role, Role) else role) if role is not None else None,
        grpc_statuses=parse_grpc_statuses(statuses),
    )
