"""A byte-exact HTTP client for the e2e tests: sends the request bytes given on the command line with
the syscall asked for, reads the response until the server closes, and writes what it received.

    raw_client.py HOST PORT REQUEST_FILE RESPONSE_OUT {send|sendmsg|writev} [--wait-stdin]

With --wait-stdin it connects, then waits for a line on stdin before each request (so a test can
start the tracer while the connection is already open), and REQUEST_FILE may hold several requests
separated by a line '#next'.
"""
import os
import socket
import sys


def send(sock: socket.socket, data: bytes, how: str) -> None:
    if how == "send":
        sock.sendall(data)
    elif how == "sendmsg":  # headers and body as two iovecs
        split = data.index(b"\r\n\r\n") + 4
        sent = sock.sendmsg([data[:split], data[split:]])
        sock.sendall(data[sent:])
    elif how == "writev":
        split = data.index(b"\r\n\r\n") + 4
        sent = os.writev(sock.fileno(), [data[:split], data[split:]])
        sock.sendall(data[sent:])
    elif how == "writev-many":  # 200 small iovecs in one call, as Node's res.write() pieces become
        step = max(1, len(data) // 200)
        pieces = [data[i:i + step] for i in range(0, len(data), step)]
        sent = os.writev(sock.fileno(), pieces)
        sock.sendall(data[sent:])
    else:
        raise SystemExit(f"unknown send method {how}")


def main() -> None:
    host, port, request_file, response_out, how = sys.argv[1:6]
    wait = "--wait-stdin" in sys.argv
    requests = open(request_file, "rb").read().split(b"#next\n")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    received = bytearray()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect((host, int(port)))
        for request in requests:
            if wait:
                sys.stdin.readline()
            send(sock, request, how)
            if wait:  # keep-alive: read one response's worth (the test sends Content-Length responses)
                received += read_one_response(sock)
                print("done", flush=True)
        if not wait:
            while chunk := sock.recv(65536):
                received += chunk
    open(response_out, "wb").write(received)


def read_one_response(sock: socket.socket) -> bytes:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


if __name__ == "__main__":
    main()
