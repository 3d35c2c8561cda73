"""JSON Lines: the field names are a public contract (docs/cli.md)."""
from __future__ import annotations

import base64
import gzip
import io
import json

from httptrace.exchange import Flag, Role
from httptrace.output import OutputOptions, make_writer
from httptrace.output.jsonl import JsonLinesWriter, exchange_to_dict, exchange_to_json
from httptrace.redact import NO_REDACTION, Redactor

import pytest
from hypothesis import given, settings, strategies as st

from .test_output_common import exchanges, make_exchange, make_request, make_response

TOP_LEVEL_ORDER = ("time", "pid", "comm", "role", "local", "remote", "tls", "latency_ms", "request", "response", "flags",
                   "stream_id", "reset_code", "grpc")
TOP_LEVEL = set(TOP_LEVEL_ORDER)
REQUEST = {"method", "target", "version", "headers", "body", "body_encoding", "body_size", "truncated", "trailers"}
RESPONSE = {"status", "reason", "version", "headers", "body", "body_encoding", "body_size", "truncated", "trailers"}


def roundtrip(exchange, redactor=None, include_bodies=True) -> dict:
    return json.loads(exchange_to_json(exchange, redactor or Redactor(), include_bodies))


def test_exact_field_names():
    record = roundtrip(make_exchange())
    assert set(record) == TOP_LEVEL
    assert set(record["request"]) == REQUEST
    assert set(record["response"]) == RESPONSE
    assert set(record["local"]) == set(record["remote"]) == {"ip", "port"}


def test_values():
    record = roundtrip(make_exchange(flags=[Flag.TRUNCATED, Flag.GAP]))
    assert record["time"] == "2026-11-24T20:31:07.123456Z"
    assert (record["pid"], record["comm"], record["role"], record["tls"]) == (4242, "curl", "client", False)
    assert record["local"] == {"ip": "10.0.0.5", "port": 51234}
    assert record["remote"] == {"ip": "93.184.216.34", "port": 80}
    assert record["latency_ms"] == 12.345
    assert record["flags"] == ["gap", "truncated"]
    request = record["request"]
    assert (request["method"], request["target"], request["version"]) == ("GET", "/api/users?id=7", "HTTP/1.1")
    assert request["headers"][0] == ["Host", "example.com"]
    assert (request["body"], request["body_encoding"], request["body_size"], request["truncated"]) == \
        ("", "utf-8", 0, False)
    response = record["response"]
    assert (response["status"], response["reason"], response["version"]) == (200, "OK", "HTTP/1.1")
    assert (response["body"], response["body_encoding"], response["body_size"]) == ('{"ok":true}', "utf-8", 11)


def test_missing_response_and_unknown_endpoints_are_null():
    record = roundtrip(make_exchange(response=None, local=None, remote=None, role=Role.SERVER,
                                     flags=[Flag.INCOMPLETE]))
    assert record["response"] is None and record["latency_ms"] is None
    assert record["local"] is None and record["remote"] is None
    assert record["role"] == "server" and record["flags"] == ["incomplete"]


def test_binary_bodies_are_base64():
    raw = gzip.compress(b"hello world" * 10)
    exchange = make_exchange(response=make_response(headers=(("Content-Encoding", "gzip"),), body=raw))
    response = roundtrip(exchange)["response"]
    assert response["body_encoding"] == "base64"
    assert base64.b64decode(response["body"]) == raw      # raw bytes: Content-Encoding is not undone
    assert response["body_size"] == len(raw)


def test_truncated_body_keeps_wire_size():
    exchange = make_exchange(response=make_response(body=b"x" * 100, body_size=5000, truncated=True),
                             flags=[Flag.TRUNCATED])
    response = roundtrip(exchange)["response"]
    assert (response["body"], response["body_size"], response["truncated"]) == ("x" * 100, 5000, True)


def test_no_body_leaves_sizes():
    record = roundtrip(make_exchange(request=make_request(method="POST", body=b"a=1")), include_bodies=False)
    for part in ("request", "response"):
        assert record[part]["body"] is None and record[part]["body_encoding"] is None
    assert record["request"]["body_size"] == 3


def test_redaction_applies():
    request = make_request(headers=(("Host", "h"), ("Authorization", "Bearer tok"), ("Cookie", "s=1")))
    response = make_response(headers=(("Set-Cookie", "s=2; Path=/"),))
    exchange = make_exchange(request=request, response=response)
    record = roundtrip(exchange)
    assert record["request"]["headers"] == [["Host", "h"], ["Authorization", "Bearer [REDACTED]"],
                                            ["Cookie", "s=[REDACTED]"]]
    assert record["response"]["headers"] == [["Set-Cookie", "s=[REDACTED]; Path=/"]]
    assert "tok" not in exchange_to_json(exchange, Redactor())
    assert roundtrip(exchange, NO_REDACTION)["request"]["headers"][1] == ["Authorization", "Bearer tok"]


def test_non_ascii_survives():
    request = make_request(headers=(("X-Name", "caf\xe9"),), body="naïve €".encode(), method="POST")
    record = roundtrip(make_exchange(request=request))
    assert record["request"]["headers"] == [["X-Name", "café"]]
    assert record["request"]["body"] == "naïve €"


def test_writer_emits_one_line_per_exchange_and_flushes_on_demand():
    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            self.flushes += 1

    stream = Stream()
    writer = make_writer("json", stream, OutputOptions())
    assert isinstance(writer, JsonLinesWriter)
    writer.write(make_exchange())
    assert stream.flushes == 0    # the CLI flushes once per batch
    writer.flush()
    assert stream.flushes == 1
    writer.write(make_exchange(response=None))
    writer.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["pid"] == 4242 for line in lines)


def test_dict_is_reusable_by_other_tools():
    record = exchange_to_dict(make_exchange(), Redactor())
    assert record["request"]["headers"] == make_exchange().request.headers   # tuples, not copies


def test_fast_line_equals_the_dict_in_content_and_key_order():
    for exchange in (make_exchange(), make_exchange(response=None, local=None),
                     make_exchange(flags=[Flag.MID_STREAM], tls=True, remote=("::1", 443))):
        line = exchange_to_json(exchange, Redactor())
        record = exchange_to_dict(exchange, Redactor())
        assert json.loads(line) == json.loads(json.dumps(record))
        assert list(json.loads(line)) == list(record) == list(TOP_LEVEL_ORDER)


@settings(max_examples=200, deadline=None)
@given(exchange=exchanges(), include_bodies=st.booleans())
def test_any_exchange_gives_one_line_of_the_contract(exchange, include_bodies):
    line = exchange_to_json(exchange, Redactor(), include_bodies)
    assert "\n" not in line
    record = json.loads(line)
    assert record == json.loads(json.dumps(exchange_to_dict(exchange, Redactor(), include_bodies)))
    assert set(record) == TOP_LEVEL and set(record["request"]) == REQUEST
    for part in ("request", "response"):
        message = getattr(exchange, part)
        if message is None:
            continue
        body = record[part]["body"]
        if not include_bodies:
            assert body is None
        elif record[part]["body_encoding"] == "base64":
            assert base64.b64decode(body) == message.body
        elif message.truncated:
            assert message.body.startswith(body.encode())
        else:
            assert body.encode() == message.body


def test_each_connection_gets_its_own_fields():
    seen = set()
    for pid in range(50):
        record = roundtrip(make_exchange(pid=pid, comm=f"p{pid}"))
        assert (record["pid"], record["comm"]) == (pid, f"p{pid}")
        seen.add(record["pid"])
    assert len(seen) == 50


@pytest.mark.parametrize("body", [
    ("x" * 3_000_001).encode(),                                  # text, several pieces
    ("é\"\\\n\x01€" * 400_000).encode(),                         # text that needs escaping, cut anywhere
    bytes(range(256)) * 9000,                                    # binary: base64
])
def test_large_bodies_written_in_pieces_give_the_same_line(body):
    exchange = make_exchange(request=make_request(method="POST", body=body), response=make_response(body=body[:5]))
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    writer = make_writer("json", stream, OutputOptions())
    writer.write(exchange)
    writer.write(make_exchange())
    writer.close()
    first, second, *more = stream.buffer.getvalue().split(b"\n")
    assert more == [b""]
    assert json.loads(first) == json.loads(exchange_to_json(exchange, Redactor()))
    assert json.loads(second) == json.loads(exchange_to_json(make_exchange(), Redactor()))


def test_a_header_that_looks_like_the_placeholder_does_not_confuse_the_splice():
    from httptrace.output import jsonl
    request = make_request(method="POST", body=b"y" * (jsonl.LARGE_BODY + 1),
                           headers=(("X-Odd", jsonl._PLACEHOLDER),))
    exchange = make_exchange(request=request)
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    writer = make_writer("json", stream, OutputOptions())
    writer.write(exchange)
    writer.close()
    assert json.loads(stream.buffer.getvalue()) == json.loads(exchange_to_json(exchange, Redactor()))


# --- Exchange.to_dict(): the same record, for Python callers --------------------------------------

def cli_line(exchange, *args: str) -> dict:
    """What `httptrace --format json ARGS` writes for `exchange`, parsed back."""
    from httptrace import cli

    options = cli.parse_args(["--format", "json", *args])
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    writer = make_writer("json", stream, OutputOptions(redactor=Redactor(options.redact, enabled=not options.no_redact),
                                                      include_bodies=options.include_bodies))
    writer.write(exchange)
    writer.close()
    return json.loads(stream.buffer.getvalue())


SECRETS = (("Authorization", "Bearer s3cr3t"), ("Cookie", "sid=abc123"), ("X-Api-Key", "k3y"))


@pytest.mark.parametrize("args, kwargs", [
    ((), {}),
    (("--redact", "x-api-key"), {"redact": ["X-API-Key"]}),
    (("--no-redact",), {"unredacted": True}),
    (("--no-body",), {"include_bodies": False}),
])
def test_to_dict_is_the_cli_record(args, kwargs):
    exchange = make_exchange(request=make_request(method="POST", headers=(("Host", "h"), *SECRETS), body=b"\xff\x00"),
                             flags=[Flag.GAP])
    record = exchange.to_dict(**kwargs)
    assert record == cli_line(exchange, *args)
    headers = dict(record["request"]["headers"])
    assert (headers["Authorization"] == "Bearer s3cr3t") == ("--no-redact" in args)
    assert (headers["X-Api-Key"] == "[REDACTED]") == ("--redact" in args)
    assert (record["request"]["body"] is None) == ("--no-body" in args)


def test_to_dict_gives_fresh_json_types():
    exchange = make_exchange()
    first, second = exchange.to_dict(), exchange.to_dict()
    assert type(first["request"]["headers"][0]) is list   # as json.loads gives it, not a tuple
    first["local"]["port"] = 1                             # one record's change stays in that record
    assert second["local"]["port"] == 51234 and exchange.to_dict()["local"]["port"] == 51234


@settings(max_examples=60)
@given(exchange=exchanges())
def test_to_dict_matches_the_line_for_any_exchange(exchange):
    assert exchange.to_dict() == json.loads(exchange_to_json(exchange, Redactor()))
