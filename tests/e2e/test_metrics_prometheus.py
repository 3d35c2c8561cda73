"""--metrics scraped by a real Prometheus: after known requests, its query API returns exactly
their counts per method, route and status (and the display filters do not change them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter

import pytest

from .conftest import HERE, free_port, require_tool, serving, wait_for_port
from .test_cli import start_cli

UUID = "2b4c6d8e-1f3a-4b5c-9d7e-0a1b2c3d4e5f"
# (method, target, status) sent by curl, and the route each must be counted under.
REQUESTS = (
    [("GET", f"/users/{i}?s=200", 200, "/users/{id}") for i in range(1, 6)]
    + [("POST", "/orders?s=201", 201, "/orders")] * 3
    + [("DELETE", "/users/7?s=204", 204, "/users/{id}")] * 2
    + [("GET", "/missing?s=404", 404, "/missing")] * 4
    + [("PUT", f"/items/{UUID}?s=500", 500, "/items/{id}")] * 2
)


@pytest.fixture
def red_server():
    port = free_port()
    with serving([sys.executable, os.path.join(HERE, "servers", "red_server.py"), str(port)], port) as proc:
        yield proc, port


@pytest.fixture
def prometheus(tmp_path):
    """A Prometheus scraping 127.0.0.1:<agent port> every second; yields (agent port, query function)."""
    binary = require_tool("prometheus")
    agent_port, web_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                      f"scrape_configs:\n  - job_name: httptrace\n"
                      f"    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web_port}"], stdout=log, stderr=log)
    try:
        wait_for_port(web_port, timeout=30)

        def query(expr: str) -> list:
            url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            answer = json.loads(urllib.request.urlopen(url, timeout=10).read())
            assert answer["status"] == "success", answer
            return answer["data"]["result"]

        yield agent_port, query
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _wait_for(query, expr: str, value: float, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    result = []
    while time.monotonic() < deadline:
        result = query(expr)
        if result and float(result[0]["value"][1]) == value:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{expr}: wanted {value}, Prometheus says {result}")


def test_prometheus_counts_every_request_by_method_route_and_status(red_server, prometheus, tmp_path):
    server, port = red_server
    agent_port, query = prometheus
    shown = tmp_path / "shown.jsonl"
    # --method POST is a display filter: the output keeps only POSTs, the metrics count everything.
    agent = start_cli("--port", str(port), "--metrics", f"127.0.0.1:{agent_port}", "--method", "POST",
                      "--format", "json", "-o", str(shown))
    try:
        _wait_for(query, 'up{job="httptrace"}', 1)
        for method, target, _, _ in REQUESTS:
            subprocess.run(["curl", "-sS", "-o", "/dev/null", "-X", method, f"http://127.0.0.1:{port}{target}"],
                           check=True, timeout=30)
        server_comm = open(f"/proc/{server.pid}/comm").read().strip()
        selector = f'process_executable_name="{server_comm}",container_id=""'
        _wait_for(query, f"sum(http_server_request_duration_seconds_count{{{selector}}})", len(REQUESTS))
        result = query(f"http_server_request_duration_seconds_count{{{selector}}}")
        counted = {(r["metric"]["http_request_method"], r["metric"]["http_route"],
                    r["metric"]["http_response_status_code"]): float(r["value"][1]) for r in result}
        expected = Counter((method, route, str(status)) for method, _, status, route in REQUESTS)
        assert counted == {key: float(n) for key, n in expected.items()}
        # The same requests from curl's side, as client metrics (one curl process per request).
        client = query('sum by (http_request_method, http_route, http_response_status_code) '
                       '(http_client_request_duration_seconds_count{process_executable_name="curl"})')
        assert {(r["metric"]["http_request_method"], r["metric"]["http_route"],
                 r["metric"]["http_response_status_code"]): float(r["value"][1]) for r in client} == \
            {key: float(n) for key, n in expected.items()}
        # Every response is within the 10 s bucket, none within 0 s; body sizes are those curl received.
        assert float(query(f'sum(http_server_request_duration_seconds_bucket{{{selector},le="10.0"}})')[0]["value"][1]) \
            == len(REQUESTS)
        body_bytes = sum(len(f"{m} {t}\n") for m, t, s, _ in REQUESTS if s != 204)
        assert float(query(f"sum(http_server_response_body_size_bytes_sum{{{selector}}})")[0]["value"][1]) == body_bytes
        _wait_for(query, "httptrace_exchanges_total", 2 * len(REQUESTS))
        assert float(query("httptrace_drops_total")[0]["value"][1]) == 0
        assert float(query("httptrace_skipped_requests_total")[0]["value"][1]) == 0   # exported before overload
        assert float(query("httptrace_events_total")[0]["value"][1]) > 0
        assert float(query("httptrace_routes_overflow_total")[0]["value"][1]) == 0
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    lines = [json.loads(line) for line in shown.read_text().splitlines()]
    assert len(lines) == 2 * 3 and {x["request"]["method"] for x in lines} == {"POST"}
