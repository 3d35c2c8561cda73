"""Real HTTP/2 byte streams for the unit tests: an `h2` client and server talking in memory.

`Conversation` records what each side wrote, in order, as (direction, bytes) with the traced
process being the client (EGRESS = client to server).  `replay` feeds a recording to a
Reassembler the way the kernel would: positions per direction, a clock, optional splits, losses
and a late start.
"""
from __future__ import annotations

import random

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RemoteSettingsChanged, RequestReceived, StreamReset

from httptrace.exchange import Connection, Endpoint, Role
from httptrace.sessions import Reassembler

EGRESS, INGRESS = 0, 1
KEY = (4242, 7, 99)


class Conversation:
    def __init__(self, *, client_settings=None, server_settings=None, connect=True):
        """Connected with prior knowledge unless `connect` is False; *_settings: {setting id: value}."""
        config = dict(header_encoding=None, validate_outbound_headers=False, validate_inbound_headers=False,
                      normalize_outbound_headers=False)
        self.client = H2Connection(H2Configuration(client_side=True, **config))
        self.server = H2Connection(H2Configuration(client_side=False, **config))
        self.wire: list[tuple[int, bytes]] = []
        self.server_events: list = []
        self.client_events: list = []
        if connect:
            self.client.initiate_connection()
            self.flush()
            self.server.initiate_connection()
            self.flush()
            # Sent as SETTINGS frames of their own (h2 applies them once acknowledged).
            self.client.update_settings({4: 1 << 24, 3: 10000, **(client_settings or {})})
            self.server.update_settings({4: 1 << 24, 3: 10000, **(server_settings or {})})
            self.flush()

    def flush(self) -> None:
        """Deliver what both sides wrote, client first, until neither has anything more to say."""
        while True:
            moved = False
            data = self.client.data_to_send()
            if data:
                self.wire.append((EGRESS, data))
                self._received(self.server, self.server.receive_data(data), self.server_events)
                moved = True
            data = self.server.data_to_send()
            if data:
                self.wire.append((INGRESS, data))
                self._received(self.client, self.client.receive_data(data), self.client_events)
                moved = True
            if not moved:
                return

    @staticmethod
    def _received(endpoint, events, log) -> None:
        log += events
        for event in events:
            if isinstance(event, DataReceived) and event.flow_controlled_length:
                try:    # give the window back, so long bodies keep flowing
                    endpoint.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except Exception:
                    pass

    def send_body(self, endpoint, stream_id, data: bytes, end_stream: bool, frame_size=None, pad_length=None):
        """DATA frames of at most the peer's frame size, waiting for window updates as needed."""
        at = 0
        while True:
            size = min(frame_size or endpoint.max_outbound_frame_size, endpoint.local_flow_control_window(stream_id))
            if pad_length is not None:
                size -= pad_length + 1
            chunk = data[at:at + max(size, 0)]
            last = at + len(chunk) >= len(data)
            if chunk or last:
                endpoint.send_data(stream_id, chunk, end_stream=end_stream and last, pad_length=pad_length)
            at += len(chunk)
            self.flush()
            if last:
                return

    # -- shorthands ---------------------------------------------------------------------------------

    def request(self, path="/", method="GET", headers=(), body=None, end_stream=True, authority="example.test"):
        stream_id = self.client.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority), *headers]
        self.client.send_headers(stream_id, fields, end_stream=end_stream and body is None)
        if body is not None:
            self.send_body(self.client, stream_id, body, end_stream)
        self.flush()
        return stream_id

    def respond(self, stream_id, status=200, headers=(), body=None, trailers=None, end_stream=True):
        self.server.send_headers(stream_id, [(":status", str(status)), *headers],
                                 end_stream=end_stream and body is None and trailers is None)
        if body is not None:
            self.send_body(self.server, stream_id, body, end_stream and trailers is None)
        if trailers is not None:
            self.server.send_headers(stream_id, list(trailers), end_stream=True)
        self.flush()

    def exchange(self, path="/", body=None, response=b"ok", method=None, headers=(), response_headers=()):
        stream_id = self.request(path, method or ("POST" if body is not None else "GET"), headers, body)
        self.respond(stream_id, 200, [("content-type", "text/plain"), *response_headers], response)
        return stream_id

    def raw(self, direction: int, data: bytes) -> None:
        """Bytes neither endpoint wrote (hand-made frames, garbage)."""
        self.wire.append((direction, data))


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def open_connection(reassembler: Reassembler, role: Role = Role.CLIENT, key=KEY) -> None:
    reassembler.open(key, Connection(pid=key[0], fd=key[1], tsid=key[2], comm="app",
                                     local=Endpoint("127.0.0.1", 40000), remote=Endpoint("127.0.0.1", 8080),
                                     role=role))


def pieces(data: bytes, split, rng: random.Random | None = None) -> list[bytes]:
    """data cut into events: "whole", "bytes" (one byte each), an int size, or "random"."""
    if split == "whole":
        return [data]
    if split == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    if split == "random":
        rng = rng or random.Random(0)
        out, at = [], 0
        while at < len(data):
            size = rng.randint(1, 40)
            out.append(data[at:at + size])
            at += size
        return out
    return [data[i:i + split] for i in range(0, len(data), split)]


def replay(wire, *, role: Role = Role.CLIENT, split="whole", reassembler: Reassembler | None = None,
           lose=(), start_at: int = 0, close=True, rng=None, key=KEY, open_event=True, **options):
    """Feed a recording; `lose` holds indices of recorded writes whose events are lost; with
    `start_at`, the tracer starts at that write (the connection predates it: no open event, role
    unknown).  Returns (exchanges, reassembler)."""
    r = reassembler or Reassembler(**options)
    if open_event and not start_at:
        open_connection(r, role, key)
    # The traced process is the client: it writes EGRESS; as the server, it reads those bytes.
    flip = role is Role.SERVER
    pos = [0, 0]
    ts = 1_000_000
    for index, (direction, data) in enumerate(wire):
        if flip:
            direction = 1 - direction
        if index < start_at or index in lose:
            pos[direction] += len(data)
            continue
        for piece in pieces(data, split, rng):
            ts += 1000
            r.data(key, direction, pos[direction], piece, 0, ts)
            pos[direction] += len(piece)
    if close:
        r.close(key, ts + 1000)
    return r.drain(), r


def fields_of(exchange_message) -> list[tuple[str, str]]:
    return list(exchange_message.headers)


__all__ = ["Conversation", "grpc_message", "open_connection", "pieces", "replay", "EGRESS", "INGRESS", "KEY",
           "RequestReceived", "StreamReset", "ConnectionTerminated", "RemoteSettingsChanged"]
