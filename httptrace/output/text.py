"""Human text view: one line per exchange, headers with -v, bodies with -vv.

    20:31:07.123456 4242/nginx server <- 10.0.0.7:51234 GET /api/users 200 12.3ms req=0B resp=1.2KiB

Time is local (like tcpdump); the arrow points from the peer that sent the request.
Everything shown comes from the network, so control characters are escaped: a crafted
request must not be able to drive the terminal of the person watching it.
"""
from __future__ import annotations

import time
from typing import IO

from httptrace.exchange import Endpoint, Exchange, Flag, Message, Role
from httptrace.output import OutputOptions, body_as_text, decoded_content, endpoint_text

# How much of a binary body -vv shows as hex.
HEX_PREVIEW_BYTES = 32

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_STATUS_COLORS = {1: "\x1b[37m", 2: "\x1b[32m", 3: "\x1b[36m", 4: "\x1b[33m", 5: "\x1b[31m"}
_FLAG_COLOR = "\x1b[35m"

# C0 controls (but tab and newline), DEL, C1 controls and the bidirectional overrides
# (which can make a shown line read differently from what was sent) -> visible escapes.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}
_ESCAPES.update({c: f"\\u{c:04x}" for c in (*range(0x200E, 0x2010), *range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_LINE_ESCAPES = {**_ESCAPES, 0x09: "\\t", 0x0A: "\\n"}


def safe_line(text: str) -> str:
    """For single-line fields (target, header values, comm): no control character survives."""
    return text if text.isprintable() else text.translate(_LINE_ESCAPES)


def safe_block(text: str) -> str:
    """For bodies: keep newlines and tabs, escape every other control character."""
    return text.translate(_ESCAPES)


def human_size(size: float) -> str:
    if size < 1024:
        return f"{size}B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:.1f}{unit}"
    raise AssertionError("unreachable")


def human_latency(ns: int | None) -> str:
    if ns is None:
        return "-"
    ms = ns / 1_000_000
    if ms >= 100:
        return f"{ms:.0f}ms"
    if ms >= 10:
        return f"{ms:.1f}ms"
    return f"{ms:.2f}ms"


def _local_clock(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{rest // 1000:06d}"


def _peer(endpoint: Endpoint | None) -> str:
    return "?" if endpoint is None else endpoint_text(endpoint.ip, endpoint.port)


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color else text


def format_summary_line(exchange: Exchange, color: bool = False) -> str:
    """The one line printed for every exchange."""
    connection = exchange.connection
    request = exchange.request
    response = exchange.response
    arrow = {Role.CLIENT: "->", Role.SERVER: "<-"}.get(connection.role, "--")
    if response is not None and response.status is not None:
        status = _paint(str(response.status), _STATUS_COLORS.get(response.status // 100, ""), color)
        response_size = human_size(response.body_size)
    else:
        status = _paint("---", _DIM, color)
        response_size = "-"
    if exchange.grpc is not None:
        grpc_status = exchange.grpc.status
        status += " grpc=" + ("?" if grpc_status is None else str(grpc_status))
    parts = [
        _paint(_local_clock(request.first_byte_ns), _DIM, color),
        f"{connection.pid}/{safe_line(connection.comm)}",
        connection.role.value,
        arrow,
        _peer(connection.remote),
        _paint(safe_line(request.method or "?"), _BOLD, color),
        safe_line(request.target or "?"),
        *(("HTTP/2",) if exchange.stream_id is not None else ()),
        status,
        human_latency(exchange.latency_ns),
        f"req={human_size(request.body_size)}",
        f"resp={response_size}",
    ]
    if connection.tls:
        parts.append("tls")
    if exchange.flags:
        parts.append(_paint("[" + ",".join(sorted(f.value for f in exchange.flags)) + "]", _FLAG_COLOR, color))
    return " ".join(parts)


def _start_line(message: Message) -> str:
    if message.method is not None:
        return f"{message.method} {message.target} {message.version}"
    reason = f" {message.reason}" if message.reason else ""
    return f"{message.version} {message.status}{reason}"


def _body_lines(message: Message, not_visible: bool) -> list[str]:
    if not_visible and not message.body and message.body_size:
        return [f"[body not visible (sent with sendfile): {message.body_size} bytes]"]
    if not message.body:
        return [f"[body not captured: {message.body_size} bytes]"] if message.body_size else []
    data, decoded = decoded_content(message)
    lines: list[str] = []
    text = body_as_text(data, truncated=message.truncated)
    if text is not None and "\x00" not in text:
        lines.extend(safe_block(text).split("\n"))
    else:
        preview = data[:HEX_PREVIEW_BYTES].hex(" ")
        more = " ..." if len(data) > HEX_PREVIEW_BYTES else ""
        lines.append(f"[binary body: {len(data)} bytes] {preview}{more}")
    notes = []
    if decoded:
        coding = message.header("content-encoding") or message.header("transfer-encoding") or ""
        notes.append(f"decoded {safe_line(coding)} from {len(message.body)} bytes")
    if message.truncated:
        notes.append(f"truncated: {len(message.body)} of {message.body_size} bytes captured")
    if notes:
        lines.append("[" + "; ".join(notes) + "]")
    return lines


def format_details(exchange: Exchange, options: OutputOptions) -> list[str]:
    """The -v / -vv lines under the summary line: curl-style "> " and "< " blocks."""
    lines: list[str] = []
    not_visible = Flag.NOT_VISIBLE in exchange.flags
    for prefix, message in ((">", exchange.request), ("<", exchange.response)):
        if message is None:
            lines.append(f"  {prefix} (no response)")
            continue
        lines.append(f"  {prefix} {safe_line(_start_line(message))}")
        for name, value in options.redactor.headers(message.headers):
            lines.append(f"  {prefix} {safe_line(name)}: {safe_line(value)}")
        if options.verbosity >= 2 and options.include_bodies:
            body = _body_lines(message, not_visible)
            if body:
                lines.append(f"  {prefix}")
                lines.extend(f"  {prefix} {line}" for line in body)
        for name, value in options.redactor.headers(message.trailers):
            lines.append(f"  {prefix} [trailer] {safe_line(name)}: {safe_line(value)}")
    lines.append("")
    return lines


class TextWriter:
    """Writes the text view to a text stream; flush() (after each batch) makes it visible."""

    def __init__(self, stream: IO[str], options: OutputOptions):
        self._stream = stream
        self._options = options

    def write(self, exchange: Exchange) -> None:
        text = format_summary_line(exchange, self._options.color)
        if self._options.verbosity >= 1:
            text = "\n".join([text, *format_details(exchange, self._options)])
        self._stream.write(text + "\n")

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
