"""Parser-only micro benchmark: how fast the pure-Python reassembly runs, with no kernel involved.

    python bench/parser_bench.py            # about 10 s on an idle machine

Figures printed (best of a few rounds, time.perf_counter):
- small exchanges through the whole Reassembler (a GET and a ~100 byte response, keep-alive
  connections, one event per message), as exchanges/s;
- the same, pipelined 10 to an event;
- the same with every message cut into 16-byte events (the buffered, slow path);
- the HTTP/1 reader alone on requests, as messages/s;
- 10 MB response bodies in 32 KiB events (the kernel's event size), kept up to the default
  1 MiB max_body, and kept whole with max_body=16 MiB, as exchanges/s and MB/s.
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from httptrace.exchange import Connection, Role  # noqa: E402
from httptrace.protocols.http1 import REQUEST, MessageReader, NullSink  # noqa: E402
from httptrace.sessions import Reassembler  # noqa: E402

REQUEST_BYTES = (b"GET /api/v1/items/12345?fields=name,price HTTP/1.1\r\nHost: shop.example.com\r\n"
                 b"User-Agent: bench/1.0\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\n"
                 b"Connection: keep-alive\r\n\r\n")
BODY = b'{"id": 12345, "name": "widget", "price": 9.99, "tags": ["a", "b"], "stock": 17, "ok": true}'
RESPONSE_BYTES = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Date: Mon, 24 Nov 2025 20:00:00 GMT\r\nServer: bench\r\nCache-Control: no-cache\r\n\r\n"
                  % len(BODY)) + BODY
CONNECTIONS = 100
EVENT_SIZE = 32 * 1024


def best_of(rounds: int, run) -> float:
    """Smallest elapsed seconds over `rounds` runs of run()."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def open_connections(r: Reassembler, count: int) -> list[tuple[int, int, int]]:
    keys = [(1000, fd, fd * 7919) for fd in range(count)]
    for key in keys:
        r.open(key, Connection(key[0], key[1], key[2], "bench", None, None, Role.CLIENT))
    return keys


def small_exchanges(total: int, pipeline: int = 1, event_size: int = 0):
    request = REQUEST_BYTES * pipeline
    response = RESPONSE_BYTES * pipeline
    if event_size:
        requests = [request[i:i + event_size] for i in range(0, len(request), event_size)]
        responses = [response[i:i + event_size] for i in range(0, len(response), event_size)]
    else:
        requests, responses = [request], [response]

    def run():
        r = Reassembler()
        keys = open_connections(r, CONNECTIONS)
        positions = {key: [0, 0] for key in keys}
        data = r.data
        ts = 0
        done = 0
        for round_ in range(total // (pipeline * CONNECTIONS)):
            for key in keys:
                pos = positions[key]
                for piece in requests:
                    ts += 1
                    data(key, 0, pos[0], piece, 0, ts)
                    pos[0] += len(piece)
                for piece in responses:
                    ts += 1
                    data(key, 1, pos[1], piece, 0, ts)
                    pos[1] += len(piece)
            done += len(r.drain())
        assert done == total, (done, total)
    return run


def reader_only(total: int):
    def run():
        reader = MessageReader(REQUEST, NullSink())
        receive = reader.receive_data
        for ts in range(total):
            receive(REQUEST_BYTES, ts)
    return run


def big_bodies(count: int, size: int, max_body: int):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
    body_event = b"\xab" * EVENT_SIZE

    def run():
        r = Reassembler(max_body=max_body, max_total_buffer=1 << 30)
        [key] = open_connections(r, 1)
        pos = [0, 0]
        ts = 0
        done = 0
        for _ in range(count):
            ts += 1
            r.data(key, 0, pos[0], REQUEST_BYTES, 0, ts)
            pos[0] += len(REQUEST_BYTES)
            ts += 1
            r.data(key, 1, pos[1], head, 0, ts)
            pos[1] += len(head)
            left = size
            while left:
                piece = body_event if left >= EVENT_SIZE else body_event[:left]
                ts += 1
                r.data(key, 1, pos[1], piece, 0, ts)
                pos[1] += len(piece)
                left -= len(piece)
            exchanges = r.drain()
            done += len(exchanges)
            assert exchanges[0].response.body_size == size
        assert done == count
    return run


def main() -> None:
    print(f"httptrace parser benchmark (Python {sys.version.split()[0]})")
    print(f"  small exchange: request {len(REQUEST_BYTES)} B, response {len(RESPONSE_BYTES)} B, "
          f"{CONNECTIONS} keep-alive connections")

    total = 50_000
    seconds = best_of(3, small_exchanges(total))
    print(f"  small exchanges, one event per message   : {total / seconds:10,.0f} exchanges/s")

    seconds = best_of(3, small_exchanges(total, pipeline=10))
    print(f"  small exchanges, pipelined 10 per event  : {total / seconds:10,.0f} exchanges/s")

    slow_total = 10_000
    seconds = best_of(2, small_exchanges(slow_total, event_size=16))
    print(f"  small exchanges, 16-byte events          : {slow_total / seconds:10,.0f} exchanges/s")

    seconds = best_of(3, reader_only(total))
    print(f"  HTTP/1 reader alone, requests            : {total / seconds:10,.0f} messages/s")

    size = 10 * 1000 * 1000
    count = 10
    for max_body in (1 << 20, 16 << 20):
        seconds = best_of(2, big_bodies(count, size, max_body))
        print(f"  10 MB bodies in 32 KiB events, max_body {max_body >> 20:2d} MiB: "
              f"{count / seconds:8,.1f} exchanges/s = {count * size / seconds / 1e6:8,.0f} MB/s")


if __name__ == "__main__":
    main()
