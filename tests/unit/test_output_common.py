"""Shared output helpers (timestamps, body decoding, body-as-text) and the Exchange
factories the other output/CLI tests import."""
from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import strategies as st

from httptrace import output
from httptrace.exchange import Connection, Endpoint, Exchange, Flag, Message, Role
from httptrace.output import (
    OutputOptions, _fallback_decoded_body, body_as_text, decoded_content, endpoint_text, iso_utc, make_writer,
)

# 2026-11-24T20:31:07.123456Z
T0 = 1795552267 * 1_000_000_000 + 123_456_789


def make_request(method="GET", target="/api/users?id=7", headers=None, body=b"", body_size=None,
                 truncated=False, start=T0, duration_ns=100_000, version="HTTP/1.1") -> Message:
    if headers is None:
        headers = (("Host", "example.com"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*"))
    return Message(version=version, headers=tuple(headers), body=body,
                   body_size=len(body) if body_size is None else body_size, truncated=truncated,
                   first_byte_ns=start, last_byte_ns=start + duration_ns, method=method, target=target)


def make_response(status=200, reason="OK", headers=None, body=b'{"ok":true}', body_size=None,
                  truncated=False, start=T0 + 12_000_000, duration_ns=345_000, version="HTTP/1.1") -> Message:
    if headers is None:
        headers = (("Content-Type", "application/json"), ("Content-Length", str(len(body))))
    return Message(version=version, headers=tuple(headers), body=body,
                   body_size=len(body) if body_size is None else body_size, truncated=truncated,
                   first_byte_ns=start, last_byte_ns=start + duration_ns, status=status, reason=reason)


def make_connection(role=Role.CLIENT, pid=4242, comm="curl", local=("10.0.0.5", 51234),
                    remote=("93.184.216.34", 80), tls=False) -> Connection:
    return Connection(pid=pid, fd=5, tsid=777, comm=comm,
                      local=Endpoint(*local) if local else None,
                      remote=Endpoint(*remote) if remote else None, role=role, tls=tls)


_DEFAULT = object()


def make_exchange(request=None, response=_DEFAULT, flags=(), **connection) -> Exchange:
    return Exchange(connection=make_connection(**connection),
                    request=request if request is not None else make_request(),
                    response=make_response() if response is _DEFAULT else response,
                    flags=frozenset(flags))


# Header text as the parser hands it over: latin-1 decoded, no CR/LF.
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30)
_token = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=16)
_headers = st.lists(st.tuples(st.one_of(_token, st.sampled_from(
    ["Host", "Cookie", "Set-Cookie", "Authorization", "Content-Type", "Content-Encoding", "Location"])),
    _header_text), max_size=8).map(tuple)
_bodies = st.one_of(st.binary(max_size=64), st.text(max_size=40).map(str.encode))
_ips = st.sampled_from(["10.0.0.5", "::1", "::ffff:10.0.0.1", "fe80::1"])


@st.composite
def exchanges(draw):
    """Arbitrary but well-formed Exchanges, for properties every output must keep."""
    start = draw(st.integers(0, 4_000_000_000)) * 1_000_000_000 + draw(st.integers(0, 999_999_999))
    durations = [draw(st.integers(0, 10**10)) for _ in range(3)]
    body = draw(_bodies)
    cut = draw(st.booleans())
    request = make_request(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "CONNECT", "OPTIONS"])),
        target=draw(st.one_of(st.just("*"), st.just("http://proxy.example/x?y=1"),
                              st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=30)
                              .map(lambda t: "/" + t))),
        headers=draw(_headers), body=body, body_size=len(body) + (draw(st.integers(1, 10**6)) if cut else 0),
        truncated=cut, start=start, duration_ns=durations[0],
        version=draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"])))
    response = None
    if draw(st.booleans()):
        body = draw(_bodies)
        response = make_response(
            status=draw(st.integers(100, 599)), reason=draw(st.sampled_from(["OK", "", "Not Found"])),
            headers=draw(_headers), body=body, body_size=len(body), start=start + durations[0] + durations[1],
            duration_ns=durations[2])
    local = draw(st.one_of(st.none(), st.tuples(_ips, st.integers(1, 65535))))
    remote = draw(st.one_of(st.none(), st.tuples(_ips, st.integers(1, 65535))))
    return make_exchange(request=request, response=response, flags=draw(st.sets(st.sampled_from(list(Flag)))),
                         role=draw(st.sampled_from(list(Role))), local=local, remote=remote,
                         tls=draw(st.booleans()), comm=draw(_header_text), pid=draw(st.integers(1, 2**22)))


# --- timestamps -------------------------------------------------------------------

def test_iso_utc_has_microseconds_and_z():
    assert iso_utc(T0) == "2026-11-24T20:31:07.123456Z"


def test_iso_utc_second_cache_does_not_leak_between_seconds():
    assert iso_utc(T0 + 1_000_000_000) == "2026-11-24T20:31:08.123456Z"
    assert iso_utc(T0) == "2026-11-24T20:31:07.123456Z"
    assert iso_utc(T0 + 876_000) == "2026-11-24T20:31:07.124332Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000000Z"


def test_endpoint_text_brackets_ipv6():
    assert endpoint_text("10.0.0.1", 80) == "10.0.0.1:80"
    assert endpoint_text("::1", 8080) == "[::1]:8080"


# --- body as text -----------------------------------------------------------------

def test_body_as_text_utf8_and_binary():
    assert body_as_text("héllo".encode()) == "héllo"
    assert body_as_text(b"") == ""
    assert body_as_text(b"\xff\xfe\x00") is None


def test_truncated_body_cut_inside_a_character_is_still_text():
    cut = "prix: 10€".encode()[:-1]
    assert body_as_text(cut) is None
    assert body_as_text(cut, truncated=True) == "prix: 10"


def test_truncated_invalid_utf8_is_binary():
    assert body_as_text(b"\x89PNG\r\n\x1a\n\x00\x00", truncated=True) is None


# --- content decoding -------------------------------------------------------------

def _with_encoding(body: bytes, coding: str | None, truncated=False) -> Message:
    headers = (("Content-Encoding", coding),) if coding else ()
    return make_response(headers=headers, body=body, truncated=truncated)


@pytest.mark.parametrize("decode", [decoded_content, lambda m: (_fallback_decoded_body(m), None)])
def test_gzip_and_deflate_are_decoded(decode):
    plain = b'{"users": []}' * 20
    for coding, body in (("gzip", gzip.compress(plain)), ("x-gzip", gzip.compress(plain)),
                         ("deflate", zlib.compress(plain)), ("deflate", _raw_deflate(plain))):
        data, _ = decode(_with_encoding(body, coding))
        assert data == plain, coding


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def test_decoded_content_reports_whether_it_decoded():
    plain = b"hello " * 50
    assert decoded_content(_with_encoding(gzip.compress(plain), "gzip")) == (plain, True)
    assert decoded_content(_with_encoding(plain, None)) == (plain, False)
    assert decoded_content(_with_encoding(b"", "gzip")) == (b"", False)


def test_unknown_or_broken_encodings_fall_back_to_raw_bytes():
    assert decoded_content(_with_encoding(b"\x00\x01garbage", "gzip")) == (b"\x00\x01garbage", False)
    assert decoded_content(_with_encoding(b"brotli-bytes", "br")) == (b"brotli-bytes", False)


def test_fallback_decodes_what_it_can_of_a_cut_gzip_body():
    plain = bytes(range(256)) * 200
    cut = gzip.compress(plain)[:200]
    data = _fallback_decoded_body(_with_encoding(cut, "gzip", truncated=True))
    assert data and plain.startswith(data)


def test_fallback_caps_decompression_bombs(monkeypatch):
    monkeypatch.setattr(output, "MAX_DECODED_BODY", 1000)
    data = _fallback_decoded_body(_with_encoding(gzip.compress(b"\x00" * 100_000), "gzip"))
    assert len(data) == 1000


def test_a_decoder_that_raises_does_not_break_output(monkeypatch):
    def broken(message):
        raise RuntimeError("decoder bug")
    monkeypatch.setattr(output, "_decoder", broken)
    assert decoded_content(_with_encoding(b"abc", "gzip")) == (b"abc", False)


def test_make_writer_rejects_unknown_formats(tmp_path):
    with pytest.raises(ValueError):
        make_writer("xml", None, OutputOptions())


def test_factories_build_consistent_exchanges():
    exchange = make_exchange(flags=[Flag.GAP])
    assert exchange.latency_ns == 12_000_000 + 345_000
    assert exchange.request.header("host") == "example.com"
