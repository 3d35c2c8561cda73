"""gRPC over HTTP/2: what an exchange says about the call (grpc/grpc doc/PROTOCOL-HTTP2.md).

- the call is named by `:path` = "/{service}/{method}";
- each body is a sequence of length-prefixed messages (1 flag byte, 1 = compressed with
  grpc-encoding; 4-byte big-endian length), and DATA frame boundaries have nothing to do with
  message boundaries: `MessageCounter` follows the prefixes across them;
- the outcome is `grpc-status` / `grpc-message` (percent-encoded) in the trailers, or in the only
  header block of a trailers-only response.  A missing status stays None: never guessed as 0.
"""
from __future__ import annotations

from urllib.parse import unquote

from .exchange import GrpcCall, header_value


def is_grpc(headers) -> bool:
    """content-type application/grpc, application/grpc+proto, ... (and grpc-web's, same framing)."""
    content_type = header_value(headers, "content-type")
    return content_type is not None and content_type.lower().startswith("application/grpc")


def service_and_method(path: str | None) -> tuple[str | None, str | None]:
    if not path or path[0] != "/":
        return None, None
    service, slash, method = path[1:].partition("/")
    if not slash or not service or not method or "/" in method:
        return None, None
    return service, method.split("?", 1)[0]


class MessageCounter:
    """Counts the length-prefixed messages of one body as its bytes go by, without keeping them."""

    __slots__ = ("messages", "compressed", "synced", "_prefix", "_left")

    def __init__(self) -> None:
        self.messages = 0
        self.compressed = False
        self.synced = True        # False once bytes went missing where a prefix was: counting stops
        self._prefix = b""        # the part of a 5-byte prefix seen so far
        self._left = 0            # payload bytes of the current message still to come

    def feed(self, view, start: int, stop: int) -> None:
        if not self.synced:
            return
        while start < stop:
            left = self._left
            if left:
                take = left if left < stop - start else stop - start
                self._left = left - take
                start += take
                continue
            need = 5 - len(self._prefix)
            prefix = self._prefix + bytes(view[start:min(stop, start + need)])
            start += len(prefix) - len(self._prefix)
            if len(prefix) < 5:
                self._prefix = prefix
                return
            self._prefix = b""
            self.messages += 1
            if prefix[0] & 1:
                self.compressed = True
            self._left = int.from_bytes(prefix[1:5], "big")

    def feed_parts(self, parts) -> None:
        for part in parts:
            self.feed(part, 0, len(part))

    def skip(self, count: int) -> None:
        """`count` bytes are missing: still in step only if they all fell inside one message."""
        if count <= self._left and not self._prefix:
            self._left -= count
        else:
            self.synced = False


def percent_decoded(text: str) -> str:
    """grpc-message is percent-encoded UTF-8; a bad encoding is shown as it came."""
    if "%" not in text:
        return text
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        return text


def call_of(request, response, request_counter: MessageCounter | None,
            response_counter: MessageCounter | None) -> GrpcCall:
    """The GrpcCall for built request/response Messages (response may be None)."""
    service, method = service_and_method(request.target)
    status = message = None
    if response is not None:
        # Trailers, or a trailers-only response: its one block holds them.
        for fields in (response.trailers, response.headers):
            raw_status = header_value(fields, "grpc-status")
            if raw_status is not None:
                plain = raw_status.isascii() and raw_status.isdigit() and len(raw_status) < 10
                status = int(raw_status) if plain else None
                raw_message = header_value(fields, "grpc-message")
                message = percent_decoded(raw_message) if raw_message else None    # empty: no message
                break
    return GrpcCall(service, method, status, message,
                    request_counter.messages if request_counter is not None else 0,
                    response_counter.messages if response_counter is not None else 0,
                    bool((request_counter is not None and request_counter.compressed)
                         or (response_counter is not None and response_counter.compressed)))
