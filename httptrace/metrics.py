"""Prometheus RED metrics of the captured exchanges, served on /metrics (`--metrics ADDR:PORT`).

Names, buckets and labels follow the OpenTelemetry HTTP semantic conventions as they translate to
Prometheus (`http.server.request.duration` -> `http_server_request_duration_seconds`, attribute
`http.request.method` -> label `http_request_method`), which is what existing dashboards query.

Metrics count every exchange the capture scope keeps (`--pid`, `--comm`, `--port`, `--container`),
whatever the display filters (`--method`, `--path`, `--status`, `--min-latency`, `--role`, `-c`)
show: rates and error ratios stay true while a person looks at a narrow slice of the traffic.
An exchange without a response (flagged `incomplete`) has no duration and is not in the
histograms; it is counted in `httptrace_incomplete_total`.

`http_route` is bounded: the path without its query, with id-like segments replaced by `{id}`,
and at most `max_routes` distinct routes per (command, method); further ones become `other` and
are counted in `httptrace_routes_overflow_total`.

prometheus-client is an optional dependency (`pip install 'httptrace[metrics]'`), imported here only.
"""
from __future__ import annotations

import re
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Set, Tuple

from httptrace.exchange import Connection, Exchange, Role

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Histogram
    from prometheus_client.core import Metric

    from httptrace.containers import ContainerResolver

# OpenTelemetry's explicit bucket boundaries for http.*.request.duration (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Body sizes: powers of four from 0 bytes to 16 MiB (the default --max-body).
SIZE_BUCKETS = (0, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
LABELS = ("http_request_method", "http_route", "http_response_status_code", "process_executable_name",
          "container_id")
DEFAULT_MAX_ROUTES = 500
# The methods of the semantic conventions; anything else is _OTHER, so a scanner cannot grow the label.
KNOWN_METHODS = frozenset(("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"))
OTHER_ROUTE = "other"
# Tracer counters that are levels, not totals.
_GAUGES = frozenset(("connections_open", "buffered_bytes", "otlp_queued"))
# Always exported (0 until they happen), so rate() and alerts work from the first scrape.
_HEADLINE = ("events", "bytes", "drops", "skipped_requests", "skipped_responses", "gaps", "parse_errors",
             "connections", "connections_open",
             "exchanges", "truncated", "incomplete")
STATS_EVERY_S = 0.5

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DECIMAL = re.compile(r"[0-9]+")
_HEX = re.compile(r"(?=[^/]*[0-9])[0-9a-fA-F]{8,}")                  # with a digit: "deadbeef…" words stay
_BASE64ISH = re.compile(r"(?=[^/]*[0-9])(?=[^/]*[A-Za-z])[A-Za-z0-9+=_-]{16,}")   # tokens, slugs with ids
_ID = "{id}"
_MAX_ROUTE_LENGTH = 256


def normalize_route(target: Optional[str]) -> str:
    """'/users/42/orders?x=1' -> '/users/{id}/orders': path only, id-like segments as {id}."""
    if not target:
        return "/"
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        scheme, sep, rest = path.partition("://")   # absolute-form (a proxy's request), or '*'
        if not sep:
            return path[:_MAX_ROUTE_LENGTH] if path == "*" else "/"
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    segments = path.split("/")
    for index, segment in enumerate(segments):
        if segment and (_DECIMAL.fullmatch(segment) or _UUID.fullmatch(segment) or _HEX.fullmatch(segment)
                        or _BASE64ISH.fullmatch(segment)):
            segments[index] = _ID
    return "/".join(segments)[:_MAX_ROUTE_LENGTH] or "/"


class Metrics:
    """Observes exchanges (on the reader's thread: no I/O there) and serves them on /metrics."""

    def __init__(self, containers: Optional[ContainerResolver] = None, max_routes: int = DEFAULT_MAX_ROUTES) -> None:
        from prometheus_client import CollectorRegistry, Histogram, ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)   # the agent's own CPU and memory
        if containers is None:
            from httptrace.containers import default_resolver
            containers = default_resolver()
        self._containers = containers
        self.max_routes = max_routes
        self.routes_overflow = 0
        hist: Dict[Tuple[str, str], Histogram] = {}
        for role in ("server", "client"):
            hist[(role, "duration")] = Histogram(
                f"http_{role}_request_duration_seconds", f"Duration of HTTP {role} requests.",
                LABELS, buckets=DURATION_BUCKETS, registry=self.registry)
            hist[(role, "request_size")] = Histogram(
                f"http_{role}_request_body_size_bytes", f"Size of HTTP {role} request bodies.",
                LABELS, buckets=SIZE_BUCKETS, registry=self.registry)
            hist[(role, "response_size")] = Histogram(
                f"http_{role}_response_body_size_bytes", f"Size of HTTP {role} response bodies.",
                LABELS, buckets=SIZE_BUCKETS, registry=self.registry)
        self._hist = hist
        # label values -> the three histogram children
        self._children: Dict[Tuple[Role, str, str, str, str, str], Tuple[Histogram, ...]] = {}
        self._routes: Dict[Tuple[str, str], Set[str]] = {}  # (comm, method) -> routes given a label so far
        self._route_of: Dict[str, str] = {}               # path -> normalized route (a bounded cache)
        # id(connection) -> (connection, comm, container id)
        self._connection_labels: Dict[int, Tuple[Connection, str, str]] = {}
        self._stats: Dict[str, int] = {}
        self._stats_source: Optional[Callable[[], Dict[str, int]]] = None
        self._stats_at = 0.0
        self._lock = threading.Lock()
        self.registry.register(_StatsCollector(self))
        self._server: Optional[WSGIServer] = None
        self._thread: Optional[threading.Thread] = None

    # ---- the reader's side ----------------------------------------------------------------------

    def observe(self, exchange: Exchange) -> None:
        connection = exchange.connection
        role = connection.role
        response = exchange.response
        if response is None or role is Role.UNKNOWN:
            return
        cached = self._connection_labels.get(id(connection))
        if cached is None or cached[0] is not connection:
            if len(self._connection_labels) >= 4096:
                self._connection_labels.clear()
            container = self._containers.for_connection(connection)
            cached = self._connection_labels[id(connection)] = (connection, connection.comm,
                                                                 container.id if container is not None else "")
        _, comm, container_id = cached
        request = exchange.request
        method = request.method if request.method in KNOWN_METHODS else "_OTHER"
        route = self._route(comm, method, request.target)
        status = str(response.status) if response.status is not None else ""
        key = (role, method, route, status, comm, container_id)
        children = self._children.get(key)
        if children is None:
            values = key[1:]
            role_name = role.value
            children = self._children[key] = tuple(
                self._hist[(role_name, kind)].labels(*values) for kind in ("duration", "request_size", "response_size"))
        duration, request_size, response_size = children
        duration.observe(max(0, response.last_byte_ns - request.first_byte_ns) / 1e9)
        request_size.observe(request.body_size)
        response_size.observe(response.body_size)

    def _route(self, comm: str, method: str, target: Optional[str]) -> str:
        path = (target or "/").split("?", 1)[0]
        route = self._route_of.get(path)
        if route is None:
            if len(self._route_of) >= 16384:
                self._route_of.clear()
            route = self._route_of[path] = normalize_route(path)
        seen = self._routes.get((comm, method))
        if seen is None:
            seen = self._routes[(comm, method)] = set()
        if route not in seen:
            if len(seen) >= self.max_routes:
                self.routes_overflow += 1
                return OTHER_ROUTE
            seen.add(route)
        return route

    def set_stats_source(self, source: Callable[[], Dict[str, int]]) -> None:
        """Where the httptrace_* counters come from (the tracer's stats()), read by refresh()."""
        self._stats_source = source

    def refresh(self) -> None:
        """Called on the reader's thread after each batch: snapshots the counters for the scrapes, so a
        scrape never touches the tracer (whose maps may be closing) from the server's thread."""
        now = time.monotonic()
        if self._stats_source is None or now - self._stats_at < STATS_EVERY_S:
            return
        self._stats_at = now
        stats = dict(self._stats_source())
        stats["routes_overflow"] = self.routes_overflow
        with self._lock:
            self._stats = stats

    # ---- serving --------------------------------------------------------------------------------

    def serve(self, addr: str, port: int) -> None:
        """Serve /metrics on addr:port in a daemon thread; OSError if it cannot bind."""
        from prometheus_client import start_http_server

        started = start_http_server(port, addr=addr, registry=self.registry)
        if isinstance(started, tuple):   # prometheus-client >= 0.19 returns (server, thread)
            self._server, self._thread = started

    @property
    def port(self) -> Optional[int]:
        return self._server.server_address[1] if self._server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _StatsCollector:
    """httptrace_* from the last snapshot: counters as *_total, levels as gauges."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> List[Metric]:
        return []   # values appear with the first snapshot; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._metrics._lock:
            stats = dict(self._metrics._stats)
        for key in _HEADLINE + ("routes_overflow",):
            stats.setdefault(key, 0)
        for key in sorted(stats):
            value = stats[key]
            if not isinstance(value, (int, float)) or not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
                continue
            if key in _GAUGES:
                yield GaugeMetricFamily(f"httptrace_{key}", f"httptrace: {key.replace('_', ' ')} now", value=value)
            else:
                yield CounterMetricFamily(f"httptrace_{key}", f"httptrace: {key.replace('_', ' ')} so far",
                                          value=value)


def parse_listen_address(text: str) -> Tuple[str, int]:
    """'0.0.0.0:9464', ':9464' (all addresses), '[::1]:9464', 'localhost:9464' -> (addr, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected ADDR:PORT (e.g. 0.0.0.0:9464 or :9464), not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)
