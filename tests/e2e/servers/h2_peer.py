"""HTTP/2 peers built on `h2` for the e2e tests (a test-only dependency).

    python h2_peer.py server PORT
        h2c with prior knowledge, or HTTP/1.1 with `Upgrade: h2c` (answered 101, then HTTP/2).
        GET /hello -> "hello from h2"; POST /echo -> the request body; anything else -> 404.
    python h2_peer.py client PORT
        One connection; reads request specs from stdin, one JSON object per line:
        {"path": "/hello", "headers": [[name, value]], "body": "..."} or {"pause": true}
        (prints "paused" and waits for the next line before going on). Prints one JSON line per
        response: {"stream_id", "status", "headers", "body"} (body as latin-1 text).
"""
from __future__ import annotations

import json
import socket
import sys
import threading

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, ResponseReceived, StreamEnded

CONFIG = dict(header_encoding=None)


def serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


def handle(sock: socket.socket) -> None:
    conn = H2Connection(H2Configuration(client_side=False, **CONFIG))
    first = sock.recv(65536)
    requests: dict[int, dict] = {}
    if first.startswith(b"PRI * HTTP/2.0"):
        conn.initiate_connection()
        pending = first
    else:
        while b"\r\n\r\n" not in first:
            more = sock.recv(65536)
            if not more:
                return
            first += more
        head, _, pending = first.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        if "h2c" not in fields.get("upgrade", "").lower():
            sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn.initiate_upgrade_connection(fields.get("http2-settings", "").encode())
        method, path, _ = lines[0].split(" ", 2)
        requests[1] = {"method": method, "path": path, "body": b"", "ended": True}
        answer(conn, 1, requests[1])
    sock.sendall(conn.data_to_send())
    data = pending
    while True:
        for event in conn.receive_data(data) if data else ():
            if isinstance(event, RequestReceived):
                fields = dict(event.headers)
                requests[event.stream_id] = {"method": fields[b":method"].decode(), "body": b"",
                                             "path": fields[b":path"].decode()}
            elif isinstance(event, DataReceived):
                requests[event.stream_id]["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                answer(conn, event.stream_id, requests[event.stream_id])
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        data = sock.recv(65536)
        if not data:
            sock.close()
            return


def answer(conn: H2Connection, stream_id: int, request: dict) -> None:
    if request["path"] == "/echo":
        status, body = "200", request["body"]
    elif request["path"] in ("/hello", "/up"):
        status, body = "200", b"hello from h2"
    else:
        status, body = "404", b"not found"
    conn.send_headers(stream_id, [(":status", status), ("content-type", "text/plain"),
                                  ("content-length", str(len(body)))], end_stream=not body)
    size = conn.max_outbound_frame_size     # bodies here stay within the initial flow-control window
    for at in range(0, len(body), size):
        conn.send_data(stream_id, body[at:at + size], end_stream=at + size >= len(body))


def client(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    conn = H2Connection(H2Configuration(client_side=True, **CONFIG))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    for line in sys.stdin:
        spec = json.loads(line)
        if spec.get("pause"):
            print("paused", flush=True)
            sys.stdin.readline()
            continue
        stream_id = conn.get_next_available_stream_id()
        body = spec.get("body", "").encode("latin-1")
        fields = [(":method", "POST" if body else "GET"), (":path", spec["path"]), (":scheme", "http"),
                  (":authority", f"127.0.0.1:{port}"), *[tuple(field) for field in spec.get("headers", ())]]
        conn.send_headers(stream_id, fields, end_stream=not body)
        if body:
            conn.send_data(stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        response = {"stream_id": stream_id, "body": b""}
        while "done" not in response:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, ResponseReceived) and event.stream_id == stream_id:
                    response["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in event.headers]
                elif isinstance(event, DataReceived) and event.stream_id == stream_id:
                    response["body"] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded) and event.stream_id == stream_id:
                    response["done"] = True
            sock.sendall(conn.data_to_send())
        del response["done"]
        response["body"] = response["body"].decode("latin-1")
        print(json.dumps(response), flush=True)
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()


if __name__ == "__main__":
    (serve if sys.argv[1] == "server" else client)(int(sys.argv[2]))
