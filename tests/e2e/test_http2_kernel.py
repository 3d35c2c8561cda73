"""HTTP/2 in the kernel agent: connections are recognised by their preface, or mid-stream by whole frames,
and every byte of them is reported (user space reads the frames). Byte streams are compared with what the
real client sent and received."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from httptrace.events import Direction, Open, RoleHint

from .conftest import ECHO_SERVER, curl, free_port, start_nginx, wait_for_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture
def h2c_nginx(tmp_path):
    port = free_port()
    proc = start_nginx(tmp_path / "nginx", port, "nginx-h2c.conf.template")
    try:
        yield proc, port, tmp_path / "nginx" / "www"
    finally:
        proc.terminate()
        proc.wait(10)


def nginx_worker(master: subprocess.Popen) -> int:
    children = open(f"/proc/{master.pid}/task/{master.pid}/children").read().split()
    assert len(children) == 1, children
    return int(children[0])


def test_h2c_prior_knowledge_is_captured_from_the_preface(capture, h2c_nginx, tmp_path):
    master, port, www = h2c_nginx
    body = os.urandom(100_000)
    (www / "blob").write_bytes(body)
    out = tmp_path / "got"
    with capture(ports=[port]) as cap:
        # (one URL: bookworm's curl 7.88 fails a second stream on a prior-knowledge connection)
        result = curl("--http2-prior-knowledge", "-o", str(out), f"http://127.0.0.1:{port}/static/blob")
        assert result.returncode == 0, result.stderr
    assert out.read_bytes() == body
    worker = nginx_worker(master)
    client = next(ev.conn[0] for ev in cap.of_type(Open) if ev.conn[0] != worker)
    sent = cap.stream(client, Direction.EGRESS)
    assert sent.startswith(PREFACE)
    assert cap.stream(worker, Direction.INGRESS) == sent
    received = cap.stream(client, Direction.INGRESS)
    assert cap.stream(worker, Direction.EGRESS) == received
    assert body in reassemble_data(received)   # the DATA frames' payload, in order (one stream of it)
    roles = {ev.conn[0]: ev.role_hint for ev in cap.of_type(Open)}
    assert roles == {client: RoleHint.CLIENT, worker: RoleHint.SERVER}


def reassemble_data(stream: bytes) -> bytes:
    """The payload of every DATA frame of a server's byte stream, concatenated (a test-only reader)."""
    out, at = bytearray(), 0
    while at + 9 <= len(stream):
        length = int.from_bytes(stream[at:at + 3], "big")
        if stream[at + 3] == 0:
            out += stream[at + 9:at + 9 + length]
        at += 9 + length
    return bytes(out)


# Opens an h2c connection (preface, SETTINGS, ACK), then waits for a line on stdin before sending each
# frame file given, reading what the server answers for a moment after each.
MID_STREAM_CLIENT = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
time.sleep(0.3)
s.recv(65536)
s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")   # SETTINGS ACK
print("connected", flush=True)
s.settimeout(0.5)
for name in sys.argv[2:]:
    sys.stdin.readline()
    s.sendall(open(name, "rb").read())
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        pass
    print("answered", len(got), flush=True)
"""


def headers_frame(stream_id: int, path: bytes, port: int) -> bytes:
    """GET `path` as one HEADERS frame (END_STREAM | END_HEADERS), HPACK without the dynamic table:
    :method GET, :scheme http (static indices), :path and :authority as literals."""
    def literal(index: int, value: bytes) -> bytes:   # literal without indexing, indexed name
        return bytes([index]) + bytes([len(value)]) + value
    block = b"\x82\x86" + literal(4, path) + literal(1, b"127.0.0.1:%d" % port)
    return len(block).to_bytes(3, "big") + b"\x01\x05" + stream_id.to_bytes(4, "big") + block


def test_h2_connection_opened_before_the_tracer_is_found_by_its_frames(capture, h2c_nginx, tmp_path):
    master, port, www = h2c_nginx
    first, second = headers_frame(1, b"/echo?first", port), headers_frame(3, b"/echo?second", port)
    (tmp_path / "f1").write_bytes(first)
    (tmp_path / "f2").write_bytes(second)
    client = subprocess.Popen([sys.executable, "-c", MID_STREAM_CLIENT, str(port), str(tmp_path / "f1"),
                               str(tmp_path / "f2")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline() == "connected\n"
        with capture(ports=[port]) as cap:
            client.stdin.write("go\ngo\n")
            client.stdin.flush()
            assert client.stdout.readline().startswith("answered")
            assert client.stdout.readline().startswith("answered")
    finally:
        client.kill()
        client.wait()
    worker = nginx_worker(master)
    # Each HEADERS frame is one write and one read: whole frames that end where the bytes end.
    assert cap.stream(client.pid, Direction.EGRESS) == first + second
    assert cap.stream(worker, Direction.INGRESS) == first + second
    answer = cap.stream(worker, Direction.EGRESS)
    assert cap.stream(client.pid, Direction.INGRESS) == answer
    assert b"GET /echo?first\n" in answer and b"GET /echo?second\n" in answer
    assert {ev.role_hint for ev in cap.of_type(Open)} == {RoleHint.UNKNOWN}


def test_only_whole_frames_classify_a_connection_joined_mid_stream(capture, tmp_path):
    """On a connection opened before the tracer, a frame header whose payload is not all there, and bytes
    with the R bit set, are not HTTP/2; the first write of whole frames is, and is reported from there."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)])
    client = None
    try:
        wait_for_port(port)
        client = subprocess.Popen([sys.executable, "-c", SEND_AFTER_GO, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline() == "connected\n"
        with capture(ports=[port]) as cap:
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.stdout.readline() == "done\n"
    finally:
        for proc in (client, server):
            if proc:
                proc.kill()
                proc.wait()
    assert cap.stream(client.pid, Direction.EGRESS) == WHOLE_FRAMES
    assert cap.stream(server.pid, Direction.INGRESS) == WHOLE_FRAMES

CUT_SHORT = b"\x00\x00\x64\x01\x04\x00\x00\x00\x01" + b"x" * 10     # HEADERS announcing 100 bytes, 10 there
R_BIT = b"\x00\x00\x04\x08\x00\x80\x00\x00\x01" + b"\x00\x00\x10\x00"  # WINDOW_UPDATE, reserved bit set
WHOLE_FRAMES = (b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"pingpong"        # PING
                + b"\x00\x00\x04\x08\x00\x00\x00\x00\x03" + b"\x00\x00\x10\x00")  # WINDOW_UPDATE stream 3
SEND_AFTER_GO = f"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print("connected", flush=True)
sys.stdin.readline()
for data in ({CUT_SHORT!r}, {R_BIT!r}, {WHOLE_FRAMES!r}):
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        got += s.recv(100)
print("done", flush=True)
"""
