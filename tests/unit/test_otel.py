"""OTLP stage without the tracer: URL handling, and a collector that never answers must cost the
reader nothing and lose no span uncounted."""
from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("opentelemetry.sdk")

from httptrace.containers import ContainerResolver   # noqa: E402
from httptrace.otel import SpanExport, _split_host, traces_url   # noqa: E402

from .test_output_common import make_exchange   # noqa: E402


def test_traces_url():
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://c.example/otlp/v1/traces") == "https://c.example/otlp/v1/traces"
    for bad in ("collector:4318", "ftp://c/", "http://"):
        with pytest.raises(ValueError):
            traces_url(bad)


@pytest.mark.parametrize("host, expected", [
    ("api.example", ("api.example", None)), ("api:8080", ("api", 8080)), ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)), ("::1", ("::1", None)), ("api:", ("api", None)),
])
def test_split_host(host, expected):
    assert _split_host(host) == expected


@pytest.fixture
def silent_collector():
    """Accepts connections and reads, never answers: an exporter blocked on the network."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_stuck_collector_never_blocks_submit_and_every_loss_is_counted(silent_collector):
    export = SpanExport(f"http://127.0.0.1:{silent_collector}", containers=ContainerResolver(mount=None),
                        queue_size=8, sdk_queue=4, batch_size=2, timeout=0.5)
    exchanges = [make_exchange() for _ in range(500)]
    started = time.perf_counter()
    for exchange in exchanges:
        export.submit(exchange)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"submit took {elapsed:.3f}s for 500 exchanges"   # no waiting on the network
    assert export.dropped >= 500 - 8 - 4   # the queues' room: the rest was dropped at once, and counted
    export.close(timeout=2.0)
    stats = export.stats()
    assert stats["otlp_spans"] == 0   # nothing could be delivered
    assert stats["otlp_dropped"] == 500 and stats["otlp_queued"] == 0
