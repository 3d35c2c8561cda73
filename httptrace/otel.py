"""OpenTelemetry traces: one span per shown exchange, exported over OTLP/HTTP (`--otlp-endpoint URL`).

Spans follow the HTTP semantic conventions: kind SERVER or CLIENT by the traced process's role,
start at the request's first byte and end at the response's last byte, status ERROR for 5xx
(server) or 4xx/5xx (client). The resource names the traced process (`process.pid`,
`process.executable.name`, `container.id`, `host.name`; `service.name` is the command name), so
every process gets its own TracerProvider; they share one BatchSpanProcessor and OTLP exporter.
A request's `traceparent` header makes the span a child of the caller's span, in its trace.

The ring-buffer reader never waits for the network: `submit()` only appends a small record to a
bounded queue (a full queue drops the record, counted), and a worker thread makes the spans. The
worker feeds the SDK's batch processor only while the spans handed to it and not yet exported fit
in its queue, so the SDK never drops silently: every loss is in `otlp_dropped`.

Header values in spans go through the same Redactor as the outputs; only User-Agent and the trace
context headers are read, never Authorization or Cookie.

opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http are optional
(`pip install 'httptrace[otlp]'`), imported here only.
"""
from __future__ import annotations

import collections
import socket
import threading
import time
from typing import TYPE_CHECKING, Deque, Dict, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import structlog

from httptrace.exchange import Connection, Exchange, Role, header_value
from httptrace.redact import Redactor

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
    from opentelemetry.trace import Tracer

    from httptrace.containers import ContainerResolver

log = structlog.get_logger("httptrace.otel")

WARN_EVERY_S = 30.0         # export failures are logged at most this often
DEFAULT_QUEUE = 4096        # exchanges waiting for the worker
SDK_QUEUE = 8192            # the batch processor's own queue: kept from ever filling (see module doc)
BATCH_SIZE = 512
SCHEDULE_DELAY_MS = 500
EXPORT_TIMEOUT_S = 5.0
CLOSE_SECONDS = 10.0        # at exit, the most spent on the backlog before the rest is counted dropped
_PROVIDER_LIMIT = 1024

# What submit() queues for the worker: (connection, method, target, version, headers, request first and
# last byte, response status, response last byte); the response's fields are None without one.
_Record = Tuple[Connection, Optional[str], Optional[str], str, Tuple[Tuple[str, str], ...], int, int,
                Optional[int], Optional[int]]


def traces_url(endpoint: str) -> str:
    """'http://collector:4318' -> 'http://collector:4318/v1/traces'; a URL with a path is kept."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, not {endpoint!r}")
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def _protocol_version(version: Optional[str]) -> Optional[str]:
    """'HTTP/1.1' -> '1.1', 'HTTP/2' -> '2'."""
    if version and version.upper().startswith("HTTP/"):
        return version[5:]
    return None


def _split_host(host: str) -> Tuple[str, Optional[int]]:
    """Host header -> (name, port or None): 'api:8080', '[::1]:80', 'example.com'."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return name, int(port) if port.isdigit() else None


class SpanExport:
    """The --otlp-endpoint stage: submit(exchange) on the reader's thread, spans made on a worker."""

    def __init__(self, endpoint: str, redactor: Optional[Redactor] = None,
                 containers: Optional[ContainerResolver] = None,
                 queue_size: int = DEFAULT_QUEUE, headers: Optional[Dict[str, str]] = None,
                 sdk_queue: int = SDK_QUEUE, batch_size: int = BATCH_SIZE,
                 timeout: float = EXPORT_TIMEOUT_S) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.endpoint = traces_url(endpoint)
        self._redactor = redactor or Redactor()
        if containers is None:
            from httptrace.containers import default_resolver
            containers = default_resolver()
        self._containers = containers
        self.queue_size = queue_size
        self._in_flight_limit = max(1, sdk_queue - batch_size)   # so the SDK's queue can never be full
        self._queue: Deque[_Record] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self.closed = False
        self.submitted = 0
        self.dropped = 0          # queue full, or left over at exit
        self._ended = 0           # spans handed to the batch processor
        self.exported = 0
        self.failed = 0           # spans in batches the exporter reported as failed
        self._kinds = {Role.SERVER: SpanKind.SERVER, Role.CLIENT: SpanKind.CLIENT}
        self._error = Status(StatusCode.ERROR)
        self._propagator = TraceContextTextMapPropagator()
        self._host_name = socket.gethostname()
        self._providers: Dict[Tuple[int, str, str], Tracer] = {}      # (pid, comm, container id) -> its tracer
        self._by_connection: Dict[int, Tuple[Connection, Tracer]] = {}  # id(connection) -> (connection, tracer)
        self._span_errors = 0
        self._warned_at = -WARN_EVERY_S

        stage = self

        class _Counting(SpanExporter):
            """The OTLP exporter, counting what it delivered: the worker's view of the SDK's queue."""

            def __init__(self, inner: SpanExporter) -> None:
                self._inner = inner

            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                try:
                    result = self._inner.export(spans)
                except Exception:   # a bug in a transport must not kill the SDK's worker
                    result = SpanExportResult.FAILURE
                if result is SpanExportResult.SUCCESS:
                    stage.exported += len(spans)
                else:
                    stage.failed += len(spans)
                    now = time.monotonic()
                    if now - stage._warned_at >= WARN_EVERY_S:
                        stage._warned_at = now
                        log.warning("spans not delivered: the OTLP endpoint did not accept a batch",
                                    endpoint=stage.endpoint, spans=len(spans), failed_total=stage.failed)
                return result

            def shutdown(self) -> None:
                self._inner.shutdown()

            def force_flush(self, timeout_millis: int = 30000) -> bool:
                return self._inner.force_flush(timeout_millis)

        # Typed as the base class: its shutdown() is annotated, BatchSpanProcessor's is not (SDK 1.45).
        self._processor: SpanProcessor = BatchSpanProcessor(
            _Counting(OTLPSpanExporter(endpoint=self.endpoint, timeout=timeout, headers=headers)),
            max_queue_size=sdk_queue, schedule_delay_millis=SCHEDULE_DELAY_MS, max_export_batch_size=batch_size)
        self._thread = threading.Thread(target=self._work, name="httptrace-otlp", daemon=True)
        self._thread.start()

    # ---- the reader's side: no I/O, no span building -------------------------------------------

    def submit(self, exchange: Exchange) -> None:
        if exchange.connection.role is Role.UNKNOWN:
            return
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            return
        request, response = exchange.request, exchange.response
        self._queue.append((exchange.connection, request.method, request.target, request.version, request.headers,
                            request.first_byte_ns, request.last_byte_ns,
                            None if response is None else response.status,
                            None if response is None else response.last_byte_ns))
        self.submitted += 1
        if not self._wake.is_set():
            self._wake.set()

    def stats(self) -> Dict[str, int]:
        return {"otlp_spans": self.exported, "otlp_dropped": self.dropped + self.failed + self._span_errors,
                "otlp_queued": len(self._queue)}

    # ---- the worker ------------------------------------------------------------------------------

    def _in_flight(self) -> int:
        return self._ended - self.exported - self.failed

    def _work(self) -> None:
        while True:
            self._wake.wait(0.2)
            self._wake.clear()
            while self._queue:
                if self._in_flight() >= self._in_flight_limit:   # the exporter is behind: our queue fills
                    if self._stopping:
                        return
                    time.sleep(0.01)
                    continue
                record = self._queue.popleft()
                try:
                    self._span(record)
                except Exception:   # a malformed header must not stop the exports
                    self._span_errors += 1
            if self._stopping:
                return

    def _tracer(self, connection: Connection) -> Tracer:
        key = id(connection)
        cached = self._by_connection.get(key)
        if cached is not None and cached[0] is connection:
            return cached[1]
        container = self._containers.for_connection(connection)
        resource_key = (connection.pid, connection.comm, container.id if container else "")
        tracer = self._providers.get(resource_key)
        if tracer is None:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.sampling import ALWAYS_ON

            attributes: Dict[str, Union[str, int]] = {"service.name": connection.comm, "host.name": self._host_name,
                          "process.pid": connection.pid, "process.executable.name": connection.comm}
            if container is not None:
                attributes["container.id"] = container.id
            if len(self._providers) >= _PROVIDER_LIMIT:
                self._providers.clear()
            # ALWAYS_ON: every exchange is a span, whatever the caller's sampling flag said.
            provider = TracerProvider(resource=Resource.create(attributes), sampler=ALWAYS_ON,
                                      shutdown_on_exit=False)
            provider.add_span_processor(self._processor)
            tracer = self._providers[resource_key] = provider.get_tracer("httptrace")
        if len(self._by_connection) >= _PROVIDER_LIMIT * 4:
            self._by_connection.clear()
        self._by_connection[key] = (connection, tracer)
        return tracer

    def _span(self, record: _Record) -> None:
        (connection, method, target, version, headers, start_ns, request_end_ns, status, end_ns) = record
        server = connection.role is Role.SERVER
        path, _, query = (target or "").partition("?")
        method = method or "_OTHER"
        attributes: Dict[str, Union[str, int]] = {"http.request.method": method, "url.path": path or "/",
                      "url.scheme": "https" if connection.tls else "http"}
        if query:
            attributes["url.query"] = query
        if status is not None:
            attributes["http.response.status_code"] = status
        protocol = _protocol_version(version)
        if protocol:
            attributes["network.protocol.version"] = protocol
        local, remote = connection.local, connection.remote
        server_end, client_end = (local, remote) if server else (remote, local)
        host = header_value(headers, "host")
        name, port = _split_host(host) if host else (None, None)
        if name:
            attributes["server.address"] = name
            attributes["server.port"] = port if port is not None else (server_end.port if server_end else 80)
        elif server_end is not None:
            attributes["server.address"], attributes["server.port"] = server_end.ip, server_end.port
        if server and client_end is not None:
            attributes["client.address"], attributes["client.port"] = client_end.ip, client_end.port
        if remote is not None:
            attributes["network.peer.address"], attributes["network.peer.port"] = remote.ip, remote.port
        if local is not None:
            attributes["network.local.address"], attributes["network.local.port"] = local.ip, local.port
        user_agent = header_value(headers, "user-agent")
        if user_agent is not None:
            attributes["user_agent.original"] = self._redactor.value("User-Agent", user_agent)
        error = status is not None and (status >= 500 or (not server and status >= 400))
        if error:
            attributes["error.type"] = str(status)
        if server:
            from httptrace.metrics import normalize_route   # the same bounded route as the metrics
            route = normalize_route(path)
            attributes["http.route"] = route
            span_name = f"{method} {route}"
        else:
            span_name = method
        context: Optional[Context] = None
        traceparent = header_value(headers, "traceparent")
        if traceparent is not None:
            carrier = {"traceparent": traceparent}
            tracestate = header_value(headers, "tracestate")
            if tracestate is not None:
                carrier["tracestate"] = tracestate
            context = self._propagator.extract(carrier)
        span = self._tracer(connection).start_span(span_name, context=context, kind=self._kinds[connection.role],
                                                   attributes=attributes, start_time=start_ns)
        if error:
            span.set_status(self._error)
        self._ended += 1
        span.end(end_time=end_ns if end_ns is not None else request_end_ns)

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Export what is queued (for at most `timeout` seconds), then stop; leftovers count as dropped."""
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + timeout
        while self._queue and self._thread.is_alive() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stopping = True
        self._wake.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        self._processor.force_flush(int(max(0.1, deadline - time.monotonic()) * 1000))
        self._processor.shutdown()
        self.dropped += len(self._queue) + max(0, self._in_flight())
        self._queue.clear()
        self._ended = self.exported + self.failed
