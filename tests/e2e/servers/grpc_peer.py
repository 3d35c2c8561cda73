"""gRPC server and client with grpcio generic handlers over raw bytes (no protoc), for the e2e tests.

    python grpc_peer.py server PORT
        /demo.Shop/Echo (unary: the request back), /demo.Shop/List (server streaming: three messages,
        the second 40000 bytes), /demo.Shop/Fail (aborts NOT_FOUND "no such item: \u2717").
    python grpc_peer.py client PORT
        Makes the calls on one channel (Echo twice, the second gzip-compressed and over 16 KiB),
        prints one JSON line per call: {"method", "status", "details", "sent", "received"} with the
        message counts the client saw.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "demo.Shop"


def _identity(data):
    return data


def echo(request, context):
    return request


def listing(request, context):
    yield b"first"
    yield b"x" * 40000
    yield b"third"


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item: \u2717")


def serve(port: int) -> None:
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity),
        "List": grpc.unary_stream_rpc_method_handler(listing, _identity, _identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, _identity, _identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    while True:
        time.sleep(3600)


def client(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        calls = []
        unary = channel.unary_unary(f"/{SERVICE}/Echo", _identity, _identity)
        calls.append(("Echo", lambda: [unary(b"ping")]))
        calls.append(("Echo", lambda: [unary(b"z" * 30000, compression=grpc.Compression.Gzip)]))
        stream = channel.unary_stream(f"/{SERVICE}/List", _identity, _identity)
        calls.append(("List", lambda: list(stream(b"all"))))
        failing = channel.unary_unary(f"/{SERVICE}/Fail", _identity, _identity)
        calls.append(("Fail", lambda: [failing(b"item-9")]))
        for method, call in calls:
            try:
                received = call()
                status, details = 0, None
            except grpc.RpcError as error:
                received, status, details = [], error.code().value[0], error.details()
            print(json.dumps({"method": method, "status": status, "details": details, "sent": 1,
                              "received": len(received)}), flush=True)


if __name__ == "__main__":
    (serve if sys.argv[1] == "server" else client)(int(sys.argv[2]))
