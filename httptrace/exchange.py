"""The data model every stage after the reassembler speaks: one HTTP exchange.

Pure, immutable data; no parsing and no I/O here.  The reassembler
(`sessions.py`) builds these; the outputs (`output/`) and the CLI filters read them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple


class Role(str, enum.Enum):
    """Which side of the connection the traced process is."""

    CLIENT = "client"
    SERVER = "server"
    UNKNOWN = "unknown"


class Flag(str, enum.Enum):
    """Why an exchange is not a perfect copy of what crossed the socket."""

    GAP = "gap"                    # ring-buffer events were lost inside this exchange
    TRUNCATED = "truncated"        # a body was cut by the capture cap (kernel or reassembler)
    INCOMPLETE = "incomplete"      # no (complete) response: idle expiry, close or tracer exit
    PARSE_ERROR = "parse_error"    # malformed bytes were skipped before or inside it
    NOT_VISIBLE = "not_visible"    # body bytes sent with sendfile(): size known, bytes not seen
    MID_STREAM = "mid_stream"      # connection was already open when the tracer attached
    UPGRADED = "upgraded"          # 101 Switching Protocols / CONNECT: the connection went opaque
    RESET = "reset"                # HTTP/2: the stream ended with RST_STREAM (Exchange.reset_code)
    REFUSED = "refused"            # HTTP/2: a GOAWAY said the stream was never processed
    PUSHED = "pushed"              # HTTP/2: a server push (the request is the PUSH_PROMISE)
    HPACK_INCOMPLETE = "hpack_incomplete"   # HTTP/2: header fields left out, their HPACK state was unknown


# Flag bits, as the reassembly stages set them on messages being read; `flags_of` turns a mask
# into the Flag set an Exchange carries.
F_GAP = 1
F_TRUNCATED = 2
F_PARSE_ERROR = 4
F_NOT_VISIBLE = 8
F_UPGRADED = 16
F_INCOMPLETE = 32
F_MID_STREAM = 64
F_RESET = 128
F_REFUSED = 256
F_PUSHED = 512
F_HPACK_INCOMPLETE = 1024
_FLAG_OF_BIT = ((F_GAP, Flag.GAP), (F_TRUNCATED, Flag.TRUNCATED), (F_PARSE_ERROR, Flag.PARSE_ERROR),
                (F_NOT_VISIBLE, Flag.NOT_VISIBLE), (F_UPGRADED, Flag.UPGRADED),
                (F_INCOMPLETE, Flag.INCOMPLETE), (F_MID_STREAM, Flag.MID_STREAM), (F_RESET, Flag.RESET),
                (F_REFUSED, Flag.REFUSED), (F_PUSHED, Flag.PUSHED), (F_HPACK_INCOMPLETE, Flag.HPACK_INCOMPLETE))
_flag_sets: dict = {}


def flags_of(bits: int) -> frozenset:
    """The Flag set for a bit mask (cached: there are few distinct combinations)."""
    flags = _flag_sets.get(bits)
    if flags is None:
        flags = _flag_sets[bits] = frozenset(flag for bit, flag in _FLAG_OF_BIT if bits & bit)
    return flags


@dataclass(frozen=True)
class Endpoint:
    ip: str        # textual address: "127.0.0.1", "::1", "::ffff:10.0.0.1"
    port: int


@dataclass(frozen=True)
class Connection:
    """A traced socket, as the kernel described it in its open event."""

    pid: int                 # tgid of the traced process
    fd: int
    tsid: int                # kernel ns timestamp at first sight: makes (pid, fd) reuse unique
    comm: str
    local: Endpoint | None   # None when the open event was lost
    remote: Endpoint | None
    role: Role               # who sent the request (client) or received it (server)
    tls: bool = False
    cgroup_id: int = 0       # cgroup v2 id of the process (containers.py maps it to a container)


def header_value(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """First value of header `name` in (name, value) pairs, case-insensitively."""
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


class Message(NamedTuple):
    """One request or response: start line, headers and body, with capture facts.

    Immutable records.  Message and Exchange are named tuples rather than frozen dataclasses because
    the reassembler makes two Messages and an Exchange per exchange, and a frozen dataclass costs
    about 1.4 µs to construct against 0.4 µs for a named tuple."""

    version: str                          # "HTTP/1.1", "HTTP/2"
    headers: tuple[tuple[str, str], ...]  # in wire order, repeats kept; latin-1 decoded
    body: bytes                           # raw body after de-chunking (not content-decoded)
    body_size: int                        # body length on the wire after de-chunking, even if `body` was cut
    truncated: bool                       # `body` holds fewer than `body_size` bytes
    first_byte_ns: int                    # wall-clock ns (time.time_ns scale) of the first byte seen
    last_byte_ns: int                     # wall-clock ns of the last byte seen
    # request-only / response-only start-line fields; the others stay None
    method: str | None = None
    target: str | None = None
    status: int | None = None
    reason: str | None = None
    trailers: tuple[tuple[str, str], ...] = ()   # chunked (HTTP/1) or trailing HEADERS (HTTP/2)

    def header(self, name: str) -> str | None:
        """First value of a header, case-insensitively."""
        return header_value(self.headers, name)


class GrpcCall(NamedTuple):
    """What an HTTP/2 exchange with `content-type: application/grpc*` says about the call."""

    service: str | None            # "pkg.Service" from :path "/pkg.Service/Method"; None if not that shape
    method: str | None
    status: int | None             # grpc-status as sent (trailers, or a trailers-only response); never guessed
    message: str | None            # grpc-message, percent-decoded
    request_messages: int          # length-prefixed messages seen in each direction
    response_messages: int
    compressed: bool               # some message had its compressed flag set (grpc-encoding)


class Exchange(NamedTuple):
    """A request paired with its response (None when it never came)."""

    connection: Connection
    request: Message
    response: Message | None
    flags: frozenset[Flag] = frozenset()
    stream_id: int | None = None        # HTTP/2 stream; None for HTTP/1
    grpc: GrpcCall | None = None
    reset_code: int | None = None       # HTTP/2 error code of the RST_STREAM that ended it (flag RESET)

    @property
    def latency_ns(self) -> int | None:
        """Request's first byte to response's last byte: what nginx logs as $request_time."""
        if self.response is None:
            return None
        return max(0, self.response.last_byte_ns - self.request.first_byte_ns)

    def to_dict(self, *, include_bodies: bool = True, redact: Iterable[str] = (),
                unredacted: bool = False) -> dict[str, Any]:
        """The record `httptrace --format json` writes for this exchange (fields in docs/cli.md), as a
        fresh dict of JSON types: equal to json.loads() of the CLI's line.

        Redacted as the CLI redacts: Authorization, Proxy-Authorization, Cookie and Set-Cookie values
        are masked, the headers named in `redact` too; `unredacted=True` is --no-redact.
        `include_bodies=False` is --no-body."""
        from httptrace.output.jsonl import exchange_record

        return exchange_record(self, include_bodies=include_bodies, redact=redact, unredacted=unredacted)
