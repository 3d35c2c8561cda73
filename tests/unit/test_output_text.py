from __future__ import annotations

import gzip
import io
import time

from hypothesis import given, settings

from httptrace.exchange import Flag, Role
from httptrace.output import OutputOptions, make_writer
from httptrace.output.text import (
    HEX_PREVIEW_BYTES, TextWriter, format_summary_line, human_latency, human_size, safe_block, safe_line,
)
from httptrace.redact import NO_REDACTION, Redactor

from .test_output_common import T0, exchanges, make_exchange, make_request, make_response


def render(exchange, verbosity=0, color=False, redactor=None, include_bodies=True) -> str:
    stream = io.StringIO()
    writer = make_writer("text", stream, OutputOptions(redactor=redactor or Redactor(), verbosity=verbosity,
                                                       color=color, include_bodies=include_bodies))
    writer.write(exchange)
    writer.close()
    return stream.getvalue()


def local_clock(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns // 10**9)) + f".{ns % 10**9 // 1000:06d}"


def test_summary_line_has_every_field_in_order():
    line = render(make_exchange())
    assert line == (f"{local_clock(T0)} 4242/curl client -> 93.184.216.34:80 GET /api/users?id=7 200 12.3ms "
                    "req=0B resp=11B\n")


def test_server_side_no_response_ipv6_tls_and_flags():
    exchange = make_exchange(role=Role.SERVER, comm="nginx", remote=("2001:db8::7", 51234), tls=True,
                             response=None, flags=[Flag.INCOMPLETE, Flag.GAP])
    line = format_summary_line(exchange)
    assert "4242/nginx server <- [2001:db8::7]:51234 GET" in line
    assert line.endswith(" --- - req=0B resp=- tls [gap,incomplete]")


def test_unknown_peer_and_role():
    line = format_summary_line(make_exchange(remote=None, role=Role.UNKNOWN))
    assert " unknown -- ? GET " in line


def test_colour_only_when_asked():
    assert "\x1b[" not in render(make_exchange())
    coloured = render(make_exchange(response=make_response(status=503)), color=True)
    assert "\x1b[31m503\x1b[0m" in coloured


def test_human_units():
    assert [human_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**40)] == \
        ["0B", "1023B", "1.0KiB", "1.5KiB", "5.0MiB", "3072.0GiB"]
    assert [human_latency(n) for n in (None, 420_000, 12_345_000, 1_234_567_890)] == \
        ["-", "0.42ms", "12.3ms", "1235ms"]


def test_control_characters_cannot_reach_the_terminal():
    assert safe_line("/a\x1b[2Jb\tc\n") == "/a\\x1b[2Jb\\tc\\n"
    assert safe_line("plain /path") == "plain /path"
    assert safe_line("/admin\u202e/txt.exe") == "/admin\\u202e/txt.exe"   # bidi override
    assert safe_block("line1\n\tline2\x1b]0;pwned\x07\x9b") == "line1\n\tline2\\x1b]0;pwned\\x07\\x9b"
    request = make_request(target="/\x1b[31mred", headers=(("X-Evil", "a\x1bb"),), method="GET")
    shown = render(make_exchange(request=request, comm="ev\x1bil"), verbosity=1)
    assert "\x1b" not in shown


@settings(max_examples=100, deadline=None)
@given(exchange=exchanges())
def test_no_exchange_can_emit_escape_sequences(exchange):
    shown = render(exchange, verbosity=2)
    assert not any(ch in shown for ch in "\x1b\x07\x9b\r\x00")


def test_verbose_shows_redacted_headers_curl_style():
    request = make_request(headers=(("Host", "example.com"), ("Authorization", "Bearer s3cret")))
    response = make_response(headers=(("Set-Cookie", "sid=abc; Path=/"),))
    shown = render(make_exchange(request=request, response=response), verbosity=1)
    lines = shown.splitlines()
    assert lines[1:] == ["  > GET /api/users?id=7 HTTP/1.1", "  > Host: example.com",
                         "  > Authorization: Bearer [REDACTED]", "  < HTTP/1.1 200 OK",
                         "  < Set-Cookie: sid=[REDACTED]; Path=/", ""]
    assert "s3cret" not in shown
    assert "Bearer s3cret" in render(make_exchange(request=request), verbosity=1, redactor=NO_REDACTION)


def test_v_alone_does_not_show_bodies():
    assert '{"ok":true}' not in render(make_exchange(), verbosity=1)


def test_vv_shows_decoded_text_bodies():
    plain = b'{"users": ["ann", "bob"]}\nsecond line'
    response = make_response(headers=(("Content-Encoding", "gzip"),), body=gzip.compress(plain))
    shown = render(make_exchange(response=response), verbosity=2)
    assert '  < {"users": ["ann", "bob"]}\n  < second line\n' in shown
    assert "[decoded gzip from" in shown


def test_vv_binary_body_is_a_size_and_hex_preview():
    body = bytes(range(256))
    shown = render(make_exchange(response=make_response(body=body)), verbosity=2)
    preview = " ".join(f"{i:02x}" for i in range(HEX_PREVIEW_BYTES))
    assert f"  < [binary body: 256 bytes] {preview} ...\n" in shown


def test_vv_truncated_and_not_visible_bodies_say_so():
    response = make_response(body=b"abc", body_size=9000, truncated=True)
    shown = render(make_exchange(response=response, flags=[Flag.TRUNCATED]), verbosity=2)
    assert "  < abc\n" in shown and "[truncated: 3 of 9000 bytes captured]" in shown
    sent_with_sendfile = make_response(body=b"", body_size=4096)
    shown = render(make_exchange(response=sent_with_sendfile, flags=[Flag.NOT_VISIBLE]), verbosity=2)
    assert "[body not visible (sent with sendfile): 4096 bytes]" in shown


def test_vv_with_no_body_option_hides_bodies():
    shown = render(make_exchange(), verbosity=2, include_bodies=False)
    assert '{"ok":true}' not in shown


def test_vv_without_response():
    shown = render(make_exchange(response=None, request=make_request(method="POST", body=b"a=1")), verbosity=2)
    assert "  > a=1\n" in shown and "  < (no response)\n" in shown


def test_flush_is_one_per_batch():
    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            self.flushes += 1

    stream = Stream()
    writer = TextWriter(stream, OutputOptions())
    writer.write(make_exchange())
    writer.write(make_exchange())
    writer.flush()
    assert stream.flushes == 1 and stream.getvalue().count("\n") == 2
