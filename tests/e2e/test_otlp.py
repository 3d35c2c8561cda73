"""--otlp-endpoint: a real OTLP/HTTP receiver decodes what the agent posts with the official
opentelemetry-proto package; every span is checked against what curl sent and received."""
from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import HERE, free_port, serving
from .test_cli import SECRET, start_cli

trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_pb2 = pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
COOKIE_SECRET = "abcdef123secret"


class Receiver:
    """An OTLP/HTTP traces endpoint: keeps each posted body, raw and decoded."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.requests: list = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                coding = self.headers.get("Content-Encoding", "")
                if coding == "gzip":
                    body = gzip.decompress(body)
                elif coding == "deflate":
                    body = zlib.decompress(body)
                assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.bodies.append(body)
                receiver.requests.append(request)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list:
        """[(resource attributes, span)] of every span received so far."""
        out = []
        for request in list(self.requests):
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    out.extend((resource, span) for span in scope_spans.spans)
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _attributes(pairs) -> dict:
    def value(v):
        kind = v.WhichOneof("value")
        return getattr(v, kind)
    return {kv.key: value(kv.value) for kv in pairs}


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def red_server():
    port = free_port()
    with serving([sys.executable, os.path.join(HERE, "servers", "red_server.py"), str(port)], port) as proc:
        yield proc, port


def _curl(port: int, method: str, target: str, *headers: str) -> tuple[int, int]:
    """(curl's pid, its local port)."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{local_port}", "-X", method]
    for header in headers:
        args += ["-H", header]
    proc = subprocess.Popen([*args, f"http://127.0.0.1:{port}{target}"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return proc.pid, int(out)


def test_one_span_per_exchange_with_the_http_conventions(red_server, receiver, tmp_path):
    server, port = red_server
    shown = tmp_path / "shown.jsonl"
    agent = start_cli("--port", str(port), "--otlp-endpoint", f"http://127.0.0.1:{receiver.port}",
                      "--format", "json", "-o", str(shown))
    sent = []   # (method, target, status, curl pid, curl port, traceparent or None)
    try:
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
        pid, local = _curl(port, "GET", "/users/42?s=200&q=a+b", f"traceparent: {traceparent}",
                           "User-Agent: otlp-test/1.0", f"Authorization: {SECRET}", f"Cookie: sid={COOKIE_SECRET}")
        sent.append(("GET", "/users/42", "s=200&q=a+b", 200, pid, local, True))
        pid, local = _curl(port, "POST", "/orders?s=503", "User-Agent: otlp-test/1.0")
        sent.append(("POST", "/orders", "s=503", 503, pid, local, False))
        pid, local = _curl(port, "GET", "/missing?s=404", "User-Agent: otlp-test/1.0")
        sent.append(("GET", "/missing", "s=404", 404, pid, local, False))
        deadline = time.monotonic() + 20
        while len(receiver.spans()) < 2 * len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    spans = receiver.spans()
    assert len(spans) == 2 * len(sent), [s.name for _, s in spans]   # one per exchange, nothing more at exit
    assert f"otlp_spans={2 * len(sent)}" in err and "otlp_dropped" not in err, err
    records = {(r["role"], r["request"]["target"]): r for r in map(json.loads, shown.read_text().splitlines())}
    for raw in receiver.bodies:   # redaction holds in spans too: no credential in any posted byte
        assert SECRET.split()[1].encode() not in raw and COOKIE_SECRET.encode() not in raw
    server_comm = open(f"/proc/{server.pid}/comm").read().strip()

    for method, path, query, status, curl_pid, curl_port, propagated in sent:
        target = f"{path}?{query}"
        for role in ("server", "client"):
            matching = [(res, s) for res, s in spans
                        if _attributes(s.attributes).get("url.query") == query
                        and s.kind == (trace_pb2.Span.SPAN_KIND_SERVER if role == "server"
                                       else trace_pb2.Span.SPAN_KIND_CLIENT)]
            assert len(matching) == 1, (role, target, [s.name for _, s in spans])
            resource, span = matching[0]
            attributes = _attributes(span.attributes)
            record = records[(role, target)]
            expected = {
                "http.request.method": method, "url.path": path, "url.query": query, "url.scheme": "http",
                "http.response.status_code": status, "network.protocol.version": "1.1",
                "server.address": "127.0.0.1", "server.port": port,
                "network.peer.address": "127.0.0.1",
                "network.peer.port": curl_port if role == "server" else port,
                "network.local.address": "127.0.0.1",
                "network.local.port": port if role == "server" else curl_port,
                "user_agent.original": "otlp-test/1.0",
            }
            if role == "server":
                route = "/users/{id}" if path.startswith("/users/") else path
                expected.update({"client.address": "127.0.0.1", "client.port": curl_port, "http.route": route})
            error = status >= 500 or (role == "client" and status >= 400)
            if error:
                expected["error.type"] = str(status)
            assert attributes == expected, (role, target)
            assert span.name == (f"{method} {expected['http.route']}" if role == "server" else method)
            assert span.status.code == (trace_pb2.Status.STATUS_CODE_ERROR if error else trace_pb2.Status.STATUS_CODE_UNSET)
            # Start and end: the request's first byte and the response's last, as the JSON record says.
            start_us = _iso_us(record["time"])
            assert span.start_time_unix_nano // 1000 == start_us
            assert abs((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6 - record["latency_ms"]) <= 0.001
            assert resource["host.name"] == socket.gethostname()
            assert resource["process.pid"] == (server.pid if role == "server" else curl_pid)
            assert resource["process.executable.name"] == (server_comm if role == "server" else "curl")
            assert "container.id" not in resource   # both run on the host
            if propagated:
                assert span.trace_id.hex() == TRACE_ID and span.parent_span_id.hex() == PARENT_ID
            else:
                assert span.parent_span_id == b"" and span.trace_id.hex() != TRACE_ID and any(span.trace_id)


def _iso_us(text: str) -> int:
    import datetime

    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond
