"""User-space pipeline micro benchmark: ring-buffer records -> decode -> reassemble -> JSON, no kernel.

    python bench/pipeline_bench.py [--profile]

It feeds the agent's own batch decoder (Tracer._decode) with batches laid out as RingBuffer returns
them, of records laid out exactly as the kernel writes them (struct ht_data_event / ht_open_event), for the small nginx exchange that
figures 2-4 load: a 40-byte wrk request read by the server, and the response head + 17-byte body
written in one writev(). Each exchange is then filtered and written as JSON Lines to /dev/null,
as the CLI does. What it leaves out: libbpf's loop and the copy into the batch (C), which figure 3
includes. Printed: µs per exchange, best of a few rounds.
"""
from __future__ import annotations

import argparse
import gc
import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from httptrace import events, tracer as tracer_module  # noqa: E402
from httptrace.cli import CaptureRun  # noqa: E402
from httptrace.filters import ExchangeFilter  # noqa: E402
from httptrace.output import OutputOptions, make_writer  # noqa: E402

REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 23:30:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\r\n"
            b"hello from nginx\n")
CONNECTIONS = 50
TGID = 4242


def open_record(fd: int) -> bytes:
    ev = events.OpenEvent()
    ev.hdr.type = events.EventType.OPEN
    ev.hdr.ts_ns = 1
    ev.hdr.conn.tgid, ev.hdr.conn.fd, ev.hdr.conn.tsid = TGID, fd, fd * 7919
    ev.family = events.AF_INET
    ev.local_port, ev.remote_port = 18080, 40000 + fd
    ev.local_addr[:4] = ev.remote_addr[:4] = (127, 0, 0, 1)
    ev.role_hint = events.RoleHint.SERVER
    ev.comm = b"nginx"
    return bytes(ev)


def data_record(fd: int, ts_ns: int, direction: int, pos: int, payload: bytes) -> bytes:
    head = events.DataEventHead()
    head.hdr.type = events.EventType.DATA
    head.hdr.ts_ns = ts_ns
    head.hdr.conn.tgid, head.hdr.conn.fd, head.hdr.conn.tsid = TGID, fd, fd * 7919
    head.pos, head.len, head.direction = pos, len(payload), direction
    return bytes(head) + payload


def big_response(size: int) -> bytes:
    """The seed's answer of `size` letters, as Go sends it: one chunk of chunked coding."""
    body = b'{"answer":"' + b"abcdefghijklmnopqrstuvwxyz"[:13] * (size // 13) + b'"}\n'
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: Tue, 24 Nov 2026 23:30:00 GMT\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body)) + body + b"\r\n0\r\n\r\n"


def records(exchanges: int, response: bytes = RESPONSE) -> list[bytes]:
    out = [open_record(fd) for fd in range(CONNECTIONS)]
    pos = {fd: [0, 0] for fd in range(CONNECTIONS)}
    ts = 1000
    for i in range(exchanges):
        fd = i % CONNECTIONS
        ts += 5000
        out.append(data_record(fd, ts, events.Direction.INGRESS, pos[fd][1], REQUEST))
        pos[fd][1] += len(REQUEST)
        for at in range(0, len(response), events.CHUNK_SIZE):   # the kernel's event size
            chunk = response[at:at + events.CHUNK_SIZE]
            out.append(data_record(fd, ts + 20000, events.Direction.EGRESS, pos[fd][0], chunk))
            pos[fd][0] += len(chunk)
    return out


def batches(recs: list[bytes], max_count: int = tracer_module.MAX_BATCH, max_bytes: int = 4 << 20):
    """The records as RingBuffer.poll() returns them: (buffer, count), each record as
    (u32 size, 4 bytes of padding, the event, padding to 8 bytes)."""
    out, parts, count, size = [], [], 0, 0
    for rec in recs:
        padded = rec + bytes(-len(rec) % 8)
        parts.append(len(rec).to_bytes(4, "little") + bytes(4) + padded)
        count += 1
        size += 8 + len(padded)
        if count >= max_count or max_bytes - size < 8 + events.CHUNK_SIZE + 64:
            out.append((b"".join(parts), count))
            parts, count, size = [], 0, 0
    if parts:
        out.append((b"".join(parts), count))
    return out


def run_once(recs: list[tuple[bytes, int]]) -> int:
    """One pass through the agent's user-space stages; returns exchanges written."""
    tracer = tracer_module.Tracer(ports=[18080])
    tracer._ring = object()   # _pump is not used: records are handed in directly
    stream = open(os.devnull, "w")
    writer = make_writer("json", stream, OutputOptions())
    run = CaptureRun(tracer, writer, ExchangeFilter(), count=None, duration=None, summary_stream=sys.stderr)
    shown = 0
    # The same wiring exchanges() sets up, driven by hand batch by batch as _pump would.
    from httptrace.sessions import Reassembler
    tracer._reassembler = reassembler = Reassembler(max_body=tracer.max_body)
    tracer._sink_open, tracer._sink_data = tracer._reassemble_open, tracer._reassemble_data
    tracer._sink_close = tracer._reassemble_close
    for batch in recs:
        tracer._decode(batch)
        for exchange in reassembler.drain():
            if run.keep(exchange):
                writer.write(exchange)
                shown += 1
    stream.close()
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=100_000)
    parser.add_argument("--body-mb", type=int, default=0,
                        help="responses with a body of this many MB (the seed's, in 32 KiB events) instead")
    parser.add_argument("--profile", action="store_true", help="cProfile one round, top 25 by own time")
    parser.add_argument("--rounds", type=int, default=3, help="rounds timed; the best is printed")
    args = parser.parse_args()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)   # as CaptureRun.run() sets it
    response = big_response(args.body_mb << 20) if args.body_mb else RESPONSE
    recs = batches(records(args.exchanges, response))
    if args.profile:
        import cProfile
        import pstats
        cProfile.runctx("run_once(recs)", globals(), {"recs": recs}, "/tmp/pipeline.prof")
        pstats.Stats("/tmp/pipeline.prof").sort_stats("tottime").print_stats(25)
        return
    best = best_cpu = float("inf")
    for _ in range(args.rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        shown = run_once(recs)
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
    assert shown == args.exchanges, f"{shown} exchanges written of {args.exchanges}"
    # CPU time is the figure to compare on a shared machine: it does not count waiting for a CPU.
    print(f"pipeline: {best / shown * 1e6:.1f} us per exchange, {best_cpu / shown * 1e6:.1f} us of CPU "
          f"({shown / best:,.0f} exchanges/s, {shown * len(response) / best / 1e6:,.0f} MB/s of responses), "
          f"decode + reassemble + filter + JSON to /dev/null; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
