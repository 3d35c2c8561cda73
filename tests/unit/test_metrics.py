"""Prometheus stage: bounded routes, semantic-convention names and labels, the tracer's counters."""
from __future__ import annotations

import urllib.request

import pytest

pytest.importorskip("prometheus_client")

from httptrace.containers import ContainerResolver   # noqa: E402
from httptrace.exchange import Role   # noqa: E402
from httptrace.metrics import Metrics, normalize_route, parse_listen_address   # noqa: E402

from .test_output_common import make_exchange, make_request, make_response   # noqa: E402


@pytest.mark.parametrize("target, route", [
    ("/", "/"),
    ("", "/"),
    ("/users/42/orders?x=1", "/users/{id}/orders"),
    ("/users/42/", "/users/{id}/"),
    ("/o/2b4c6d8e-1f3a-4b5c-9d7e-0a1b2c3d4e5f", "/o/{id}"),
    ("/blob/3f2a9c1b0d4e5a6b", "/blob/{id}"),
    ("/t/eyJhbGciOiJIUzI1NiJ9abc", "/t/{id}"),
    ("/static/app.css", "/static/app.css"),
    ("/api/v1/health", "/api/v1/health"),
    ("/deadbeefcafe", "/deadbeefcafe"),          # hex letters only: a word, kept
    ("/getUserProfileSettings", "/getUserProfileSettings"),   # no digit: a name, kept
    ("http://example.com/a/7?q", "/a/{id}"),     # absolute-form through a proxy
    ("http://example.com", "/"),
    ("*", "*"),
])
def test_normalize_route(target, route):
    assert normalize_route(target) == route


def test_listen_address():
    assert parse_listen_address(":9464") == ("0.0.0.0", 9464)
    assert parse_listen_address("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_listen_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:0", "host:70000", "a:b"):
        with pytest.raises(ValueError):
            parse_listen_address(bad)


def _metrics(**kwargs) -> Metrics:
    return Metrics(containers=ContainerResolver(mount=None), **kwargs)


def _value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels)


def _exchange(method="GET", target="/users/1", status=200, role=Role.SERVER, comm="nginx", duration_ms=30):
    request = make_request(method=method, target=target, body=b"abc")
    response = None if status is None else make_response(status=status, start=request.first_byte_ns,
                                                         duration_ns=duration_ms * 1_000_000, body=b"x" * 100)
    return make_exchange(request=request, response=response, role=role, comm=comm)


def test_server_and_client_histograms_with_their_labels():
    metrics = _metrics()
    for i in range(3):
        metrics.observe(_exchange(target=f"/users/{i}?page=2"))
    metrics.observe(_exchange(method="POST", target="/users", status=503, duration_ms=400))
    metrics.observe(_exchange(role=Role.CLIENT, comm="curl", status=404))
    metrics.observe(_exchange(method="BREW", target="/pot"))
    metrics.observe(_exchange(status=None))   # no response: not in the histograms
    metrics.observe(_exchange(role=Role.UNKNOWN))
    labels = dict(http_request_method="GET", http_route="/users/{id}", http_response_status_code="200",
                  process_executable_name="nginx", container_id="")
    assert _value(metrics, "http_server_request_duration_seconds_count", **labels) == 3
    assert _value(metrics, "http_server_request_duration_seconds_bucket", le="0.025", **labels) == 0
    assert _value(metrics, "http_server_request_duration_seconds_bucket", le="0.05", **labels) == 3
    assert _value(metrics, "http_server_request_duration_seconds_sum", **labels) == pytest.approx(0.09)
    assert _value(metrics, "http_server_request_body_size_bytes_sum", **labels) == 9
    assert _value(metrics, "http_server_response_body_size_bytes_sum", **labels) == 300
    post = dict(labels, http_request_method="POST", http_route="/users", http_response_status_code="503")
    assert _value(metrics, "http_server_request_duration_seconds_bucket", le="0.5", **post) == 1
    client = dict(labels, process_executable_name="curl", http_response_status_code="404")
    assert _value(metrics, "http_client_request_duration_seconds_count", **client) == 1
    assert _value(metrics, "http_server_request_duration_seconds_count", **client) is None
    other = dict(labels, http_request_method="_OTHER", http_route="/pot")
    assert _value(metrics, "http_server_request_duration_seconds_count", **other) == 1
    total = sum(s.value for family in metrics.registry.collect() if family.name == "http_server_request_duration_seconds"
                for s in family.samples if s.name.endswith("_count"))
    assert total == 5


def test_routes_are_bounded_per_command_and_method():
    metrics = _metrics(max_routes=3)
    for name in ("a", "b", "c", "d", "e", "a"):
        metrics.observe(_exchange(target=f"/{name}"))
    metrics.observe(_exchange(method="POST", target="/z"))   # another method: its own budget
    base = dict(http_request_method="GET", http_response_status_code="200", process_executable_name="nginx",
                container_id="")
    assert _value(metrics, "http_server_request_duration_seconds_count", http_route="/a", **base) == 2
    assert _value(metrics, "http_server_request_duration_seconds_count", http_route="/d", **base) is None
    assert _value(metrics, "http_server_request_duration_seconds_count", http_route="other", **base) == 2
    assert _value(metrics, "http_server_request_duration_seconds_count", http_route="/z",
                  **dict(base, http_request_method="POST")) == 1
    metrics.set_stats_source(lambda: {"events": 10, "drops": 1, "connections_open": 2})
    metrics.refresh()
    assert _value(metrics, "httptrace_routes_overflow_total") == 2
    assert _value(metrics, "httptrace_events_total") == 10
    assert _value(metrics, "httptrace_drops_total") == 1
    assert _value(metrics, "httptrace_connections_open") == 2
    assert _value(metrics, "httptrace_parse_errors_total") == 0   # exported before it first happens
    assert _value(metrics, "httptrace_skipped_requests_total") == 0   # overload shedding, from the first scrape


def test_served_on_metrics(tmp_path):
    metrics = _metrics()
    metrics.observe(_exchange())
    metrics.serve("127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10).read().decode()
    finally:
        metrics.close()
    assert 'http_server_request_duration_seconds_count{container_id="",http_request_method="GET",' \
           'http_response_status_code="200",http_route="/users/{id}",process_executable_name="nginx"} 1.0' in body
    assert "process_cpu_seconds_total" in body
