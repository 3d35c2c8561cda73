"""A Python ThreadingHTTPServer for the e2e tests (HTTP/1.1, keep-alive).

    GET  /size/N   -> N bytes of a repeating pattern, Content-Length framed
    GET  /sleep/MS -> "slept\n" after MS milliseconds (a slow request)
    POST /echo     -> reads the Content-Length body, answers its length and the first 32 bytes
    anything else  -> 404
Usage: py_server.py PORT [HOST]
"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def pattern(n: int) -> bytes:
    block = bytes(range(33, 127))
    return (block * (n // len(block) + 1))[:n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def reply(self, status: int, body: bytes, content_type: str = "application/octet-stream"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/size/"):
            self.reply(200, pattern(int(self.path[len("/size/"):])))
        elif self.path.startswith("/sleep/"):
            time.sleep(int(self.path[len("/sleep/"):]) / 1000)
            self.reply(200, b"slept\n", "text/plain")
        else:
            self.reply(404, b"not found\n", "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply(200, b"%d %s\n" % (len(body), body[:32]), "text/plain")


class Server(ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET6
    daemon_threads = True

    def server_bind(self):
        import socket
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # v4 arrives v4-mapped
        super().server_bind()


if __name__ == "__main__":
    Server((sys.argv[2] if len(sys.argv) > 2 else "::", int(sys.argv[1])), Handler).serve_forever()
