"""The kernel agent on real syscalls: captured bytes equal what real clients sent and received."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from httptrace.events import Close, Data, Direction, Open, RoleHint

from .conftest import ECHO_SERVER, HERE, curl, free_port, serving, wait_for_port

PY_SERVER = os.path.join(HERE, "servers", "py_server.py")
RAW_CLIENT = os.path.join(HERE, "raw_client.py")


@pytest.fixture
def py_server():
    port = free_port(socket.AF_INET6)
    with serving([sys.executable, PY_SERVER, str(port)], port, "::1") as proc:
        yield proc, port


def pattern(n: int) -> bytes:
    block = bytes(range(33, 127))
    return (block * (n // len(block) + 1))[:n]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_curl_to_python_http_server_is_captured_byte_for_byte(capture, python_server, tmp_path, host):
    server, port, root = python_server
    (root / "hello.txt").write_bytes(b"hello, httptrace\n" * 100)
    url = f"http://[{host}]:{port}/hello.txt" if ":" in host else f"http://{host}:{port}/hello.txt"
    with capture(ports=[port]) as cap:
        client = subprocess.Popen(["curl", "-sS", "-g", "-D", str(tmp_path / "h"), "-o", str(tmp_path / "b"), url])
        assert client.wait(30) == 0
    received = (tmp_path / "h").read_bytes() + (tmp_path / "b").read_bytes()
    assert cap.stream(server.pid, Direction.EGRESS) == received
    assert cap.stream(client.pid, Direction.INGRESS) == received
    sent = cap.stream(client.pid, Direction.EGRESS)
    assert sent.startswith(b"GET /hello.txt HTTP/1.1\r\n") and sent.endswith(b"\r\n\r\n")
    assert cap.stream(server.pid, Direction.INGRESS) == sent

    opens = {ev.conn[0]: ev for ev in cap.of_type(Open)}
    v4 = host == "127.0.0.1"
    assert opens[server.pid].role_hint == RoleHint.SERVER
    assert opens[server.pid].local == ("::ffff:127.0.0.1" if v4 else "::1", port)  # dual-stack server
    assert opens[client.pid].role_hint == RoleHint.CLIENT
    assert opens[client.pid].remote == (host, port)
    assert opens[client.pid].local == (host, opens[server.pid].remote[1])
    assert opens[client.pid].comm == "curl"
    closed = {ev.conn[0] for ev in cap.of_type(Close)}
    assert {server.pid, client.pid} <= closed


@pytest.mark.parametrize("batch", ["default", "tiny"])
def test_ten_megabyte_response_arrives_whole(capture, python_server, tmp_path, monkeypatch, batch):
    """Also with the ring buffer paused after every 5 events: nothing lost or repeated across pauses."""
    if batch == "tiny":
        monkeypatch.setattr("httptrace.tracer.MAX_BATCH", 5)
    server, port, root = python_server
    body = os.urandom(10 * 1024 * 1024)
    (root / "big.bin").write_bytes(body)
    with capture(ports=[port]) as cap:
        client = subprocess.Popen(["curl", "-sS", "-D", str(tmp_path / "h"), "-o", str(tmp_path / "b"),
                                   f"http://127.0.0.1:{port}/big.bin"])
        assert client.wait(60) == 0
    assert (tmp_path / "b").read_bytes() == body
    received = (tmp_path / "h").read_bytes() + body
    _, gaps = cap.streams()
    assert not gaps and sum(cap.drops.values()) == 0
    assert cap.stream(server.pid, Direction.EGRESS) == received
    assert cap.stream(client.pid, Direction.INGRESS) == received


@pytest.mark.parametrize("how", ["writev", "sendmsg"])
def test_request_body_sent_with_iovecs(capture, py_server, tmp_path, how):
    server, port = py_server
    body = pattern(100_000)
    request = (b"POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
               + body)
    (tmp_path / "req").write_bytes(request)
    with capture(ports=[port]) as cap:
        client = subprocess.Popen([sys.executable, RAW_CLIENT, "127.0.0.1", str(port), str(tmp_path / "req"),
                                   str(tmp_path / "resp"), how])
        assert client.wait(30) == 0
    response = (tmp_path / "resp").read_bytes()
    assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"100000 " + body[:32] + b"\n")
    assert cap.stream(client.pid, Direction.EGRESS) == request
    assert cap.stream(server.pid, Direction.INGRESS) == request
    assert cap.stream(client.pid, Direction.INGRESS) == response


def test_many_small_iovecs_are_packed_into_one_event(capture, py_server, tmp_path):
    server, port = py_server
    body = pattern(3000)
    request = (b"POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
               + body)
    (tmp_path / "req").write_bytes(request)
    with capture(ports=[port]) as cap:
        client = subprocess.Popen([sys.executable, RAW_CLIENT, "127.0.0.1", str(port), str(tmp_path / "req"),
                                   str(tmp_path / "resp"), "writev-many"])
        assert client.wait(30) == 0
    assert cap.stream(client.pid, Direction.EGRESS) == request
    sent = [ev for ev in cap.of_type(Data) if ev.conn[0] == client.pid and ev.direction == Direction.EGRESS]
    assert len(sent) == 1 and sent[0].not_copied == 0  # 200 iovecs, one writev, one event


def test_keepalive_connection_opened_before_the_tracer(capture, py_server, tmp_path):
    server, port = py_server
    first = b"GET /size/10 HTTP/1.1\r\nHost: a\r\n\r\n"
    second = b"GET /size/20 HTTP/1.1\r\nHost: b\r\n\r\n"
    (tmp_path / "req").write_bytes(first + b"#next\n" + second)
    client = subprocess.Popen([sys.executable, RAW_CLIENT, "127.0.0.1", str(port), str(tmp_path / "req"),
                               str(tmp_path / "resp"), "send", "--wait-stdin"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client.stdin.write("go\n")
    client.stdin.flush()
    assert client.stdout.readline() == "done\n"
    with capture(ports=[port]) as cap:
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline() == "done\n"
    client.stdin.close()
    assert client.wait(10) == 0
    responses = (tmp_path / "resp").read_bytes()
    second_response = responses[responses.index(b"HTTP/1.1", 1):]
    assert cap.stream(server.pid, Direction.INGRESS) == second
    assert cap.stream(client.pid, Direction.EGRESS) == second
    assert cap.stream(server.pid, Direction.EGRESS) == second_response
    assert second_response.endswith(pattern(20))
    # (Only these two processes: --port also matches another connection whose ephemeral port is this one.)
    ours = [ev for ev in cap.of_type(Open) if ev.conn[0] in (server.pid, client.pid)]
    assert ours and {ev.role_hint for ev in ours} == {RoleHint.UNKNOWN}



def test_non_http_tcp_produces_no_data_events(capture, tmp_path):
    port = free_port()
    with serving([sys.executable, "-c", ECHO_SERVER, str(port)], port), capture(ports=[port]) as cap:
        for payload in (b"hello world, this is not http\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 10):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(payload)
                assert s.recv(65536)
        # and a client in another process, since the tracer never traces itself
        subprocess.run(["curl", "-s", "--max-time", "2", f"telnet://127.0.0.1:{port}"], input=b"EHLO x\r\n",
                       capture_output=True)
    assert cap.of_type(Data) == [] and cap.of_type(Open) == []


LOSSY_CLIENT = """
import socket, sys
port, writes, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sys.stdin.readline()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /sink HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % (writes * size))
for i in range(writes):
    s.sendall(bytes([65 + i % 26]) * size)
import time; time.sleep(1)
s.close()
"""

SINK_SERVER = """
import socket, sys
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
c, _ = s.accept()
while c.recv(1 << 20):
    pass
"""


def test_ring_buffer_loss_is_counted_and_visible_as_gaps(capture):
    """Each write below is one chunk, so the chunks missing from pos gaps must equal the drop counter."""
    port, writes, size = free_port(), 3000, 20_000
    sink = subprocess.Popen([sys.executable, "-c", SINK_SERVER, str(port)])
    wait_for_port(port)  # this probe connection is accepted and closed; the sink then takes the next one
    sink.kill()
    sink.wait()
    sink = subprocess.Popen([sys.executable, "-c", SINK_SERVER, str(port)])
    client = subprocess.Popen([sys.executable, "-c", LOSSY_CLIENT, str(port), str(writes), str(size)],
                              stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)
        with capture(pids=[client.pid], ring_buffer_size=64 * 1024) as cap:
            client.stdin.write(b"go\n")
            client.stdin.flush()
            assert client.wait(60) == 0
    finally:
        sink.kill()
        sink.wait()
    data = [ev for ev in cap.of_type(Data) if ev.direction == Direction.EGRESS]
    header = data[0]
    assert header.pos == 0 and header.payload.startswith(b"POST /sink")
    body_events = data[1:]
    for ev in body_events:  # what did arrive is the right bytes at the right place
        index = (ev.pos - len(header.payload)) // size
        assert ev.payload == bytes([65 + index % 26]) * size
    (close,) = [ev for ev in cap.of_type(Close) if ev.conn[0] == client.pid]
    total_body = close.bytes_sent - len(header.payload)
    assert total_body == writes * size
    missing_chunks = writes - len(body_events)
    assert cap.drops["data"] > 0, "the tiny ring buffer should have overflowed"
    assert missing_chunks == cap.drops["data"]


def bpftool_json(*args: str):
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def ids_held_by(pid: int, field: str) -> set[int]:
    """BPF object ids a process holds fds to, from /proc/PID/fdinfo ('prog_id:' / 'map_id:' lines)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                ids |= {int(line.split()[1]) for line in info if line.startswith(field + ":")}
        except OSError:
            pass
    return ids


TRACER_SCRIPT = """
import sys, time
from httptrace.tracer import Tracer
with Tracer(ports=[1]) as t:
    print("attached", flush=True)
    for _ in t.events():
        pass
"""


@pytest.mark.parametrize("ending", ["sigterm", "sigint"])
def test_nothing_stays_attached_after_the_tracer_ends(ending):
    proc = subprocess.Popen([sys.executable, "-c", TRACER_SCRIPT], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(HERE)))
    while (line := proc.stdout.readline()) != "attached\n":  # the library may log before
        assert line, "the tracer process ended before attaching"
    progs, maps = ids_held_by(proc.pid, "prog_id"), ids_held_by(proc.pid, "map_id")
    assert len(progs) >= 13 and len(maps) >= 5
    proc.send_signal(signal.SIGTERM if ending == "sigterm" else signal.SIGINT)
    proc.wait(10)
    time.sleep(0.5)  # the kernel frees programs after an RCU grace period
    still = {p["id"] for p in bpftool_json("prog", "list")} & progs
    assert still == set()
    assert {m["id"] for m in bpftool_json("map", "list")} & maps == set()


EXIT_WITHOUT_CLOSE = """
import os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /size/5 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
while not s.recv(65536).endswith(b"!\\"#$%"):
    pass
os._exit(0)  # the kernel closes the socket; no close() syscall is made
"""


def test_connections_of_a_process_that_exits_are_closed_and_forgotten(capture, py_server):
    import struct

    from httptrace.tracer import SWEEP_EVERY_S

    server, port = py_server
    with capture(ports=[port]) as cap:
        client = subprocess.Popen([sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(port)])
        assert client.wait(10) == 0
        time.sleep(SWEEP_EVERY_S * 2 + 0.5)
        conns = cap.tracer._object.map("conns")
        left = [k for k in conns.keys(8) if struct.unpack("<Q", k)[0] >> 32 == client.pid]
    assert left == []
    assert [ev.conn[0] for ev in cap.of_type(Close)].count(client.pid) == 1
    assert cap.stream(client.pid, Direction.EGRESS).startswith(b"GET /size/5")


def test_the_program_family_loaded_is_the_one_asked_for():
    """make test runs this suite twice: with the default family and with HTTPTRACE_PROGRAMS=compat. On this
    host auto means fast (6.18 has every helper); each family attaches its own programs and only those."""
    from httptrace.tracer import Tracer

    asked = os.environ.get("HTTPTRACE_PROGRAMS", "auto")
    with Tracer(ports=[1]) as tracer:
        attached = set(tracer.attached_programs)
        assert tracer.programs == ("fast" if asked == "auto" else asked), tracer.programs_reason
    compat = {name for name in attached if name.startswith("compat_")}
    if tracer.programs == "compat":
        assert {"compat_enter_read", "compat_exit_read", "compat_enter_connect", "compat_ssl_exit"} <= compat
        assert not attached & {"exit_read", "exit_connect", "ssl_exit"}
    else:
        assert compat == set() and {"exit_read", "exit_connect", "exit_sendfile"} <= attached
    assert {"exit_accept", "exit_accept4", "enter_close"} <= attached   # shared by both families
