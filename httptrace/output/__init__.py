"""Output stage: turns completed Exchanges into text lines, JSON Lines or a HAR file.

Every writer has the same three methods: `write(exchange)`, `flush()` (the CLI calls it after
each batch of exchanges, so a live view or a `tail -f` sees them within one wake-up, without a
system call per exchange) and `close()`.  Redaction is
applied by the writers themselves, so no format can forget it.  This module also holds
the small helpers the formats share: timestamps, body decoding and body-as-text.
"""
from __future__ import annotations

import codecs
import time
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Protocol

from httptrace.exchange import Exchange, Message
from httptrace.redact import Redactor

FORMATS = ("text", "json", "har")


class ExchangeWriter(Protocol):
    def write(self, exchange: Exchange) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class OutputOptions:
    redactor: Redactor = field(default_factory=Redactor)
    include_bodies: bool = True     # False with --no-body: sizes only
    verbosity: int = 0              # text only: 1 adds headers, 2 adds bodies
    color: bool = False             # text only


def make_writer(fmt: str, stream: IO[Any], options: OutputOptions) -> ExchangeWriter:
    """The writer for --format; text and json take a text stream, har a binary one."""
    # Imported here: the submodules import the helpers below from this package.
    if fmt == "text":
        from httptrace.output.text import TextWriter
        return TextWriter(stream, options)
    if fmt == "json":
        from httptrace.output.jsonl import JsonLinesWriter
        return JsonLinesWriter(stream, options)
    if fmt == "har":
        from httptrace.output.har import HarWriter
        return HarWriter(stream, options)
    raise ValueError(f"unknown output format {fmt!r}")


def httptrace_version() -> str:
    """For HAR's creator field and --version."""
    import httptrace
    return httptrace.__version__


# --- timestamps -------------------------------------------------------------------

_second_cache: tuple[int, str] = (-1, "")


def iso_utc(ns: int) -> str:
    """Wall-clock ns -> "2026-11-24T20:31:07.123456Z".  Exchanges arrive many per second,
    so the formatted second is cached: this runs once per exchange on the hot path."""
    global _second_cache
    seconds, rest = divmod(ns, 1_000_000_000)
    cached_second, prefix = _second_cache
    if seconds != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{rest // 1000:06d}Z"


# --- bodies -----------------------------------------------------------------------

# A small compressed body may inflate enormously; past this we keep what we have.
MAX_DECODED_BODY = 64 * 1024 * 1024

_decoder: Callable[[Message], bytes] | None = None   # resolved once: httptrace.http1.decoded_body, or the local fallback


def _fallback_decoded_body(message: Message) -> bytes:
    """gzip/deflate by Content-Encoding; the raw body for anything else.
    Used until (or unless) httptrace.http1 provides decoded_body."""
    coding = (message.header("content-encoding") or "").strip().lower()
    if coding in ("gzip", "x-gzip"):
        attempts: tuple[int, ...] = (31,)
    elif coding == "deflate":
        attempts = (15, -15)       # RFC says zlib-wrapped; some servers send raw deflate
    else:
        return message.body
    for wbits in attempts:
        try:
            # decompressobj, unlike decompress, returns what it could from a cut body
            return zlib.decompressobj(wbits).decompress(message.body, MAX_DECODED_BODY)
        except zlib.error:
            continue
    return message.body


def decoded_content(message: Message) -> tuple[bytes, bool]:
    """(body with Content-Encoding undone when possible, whether it was undone)."""
    global _decoder
    body = message.body
    if not body:
        return body, False
    decoder = _decoder
    if decoder is None:
        try:
            from httptrace.http1 import decoded_body
            decoder = decoded_body
        except ImportError:
            decoder = _fallback_decoded_body
        _decoder = decoder
    try:
        data = decoder(message)
    except Exception:  # a body we cannot decode is shown raw, never fatal to the capture
        return body, False
    return data, data is not body and data != body


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def body_as_text(data: bytes, truncated: bool = False) -> str | None:
    """The body as text if it is UTF-8, else None.  A truncated body may end inside a
    multi-byte character; that incomplete tail is dropped rather than calling it binary."""
    try:
        if truncated:
            return _utf8_decoder().decode(data, final=False)
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def endpoint_text(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
