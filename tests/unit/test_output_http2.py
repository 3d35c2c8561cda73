"""HTTP/2 and gRPC exchanges, made by the real pipeline, through every output, filters and redaction."""
from __future__ import annotations

import io
import json

from httptrace.exchange import Role
from httptrace.filters import build_filter
from httptrace.output import OutputOptions, make_writer
from httptrace.output.jsonl import exchange_to_json
from httptrace.redact import Redactor

from .h2wire import Conversation, grpc_message, replay
from .test_output_har import validate
from .test_output_jsonl import TOP_LEVEL_ORDER
from .test_sessions import Wire
from httptrace.sessions import Reassembler

GRPC = [("content-type", "application/grpc"), ("te", "trailers")]


def captured(role=Role.CLIENT):
    """[plain GET, gRPC call that failed with UNAVAILABLE, reset stream]"""
    c = Conversation()
    c.exchange("/page?x=1", headers=[("authorization", "Bearer s3cret"), ("cookie", "sid=abc; theme=dark")],
               response=b"<p>hi</p>", response_headers=[("set-cookie", "sid=new; Path=/")])
    call = c.request("/shop.Cart/Add", "POST", GRPC, grpc_message(b"item"))
    c.respond(call, 200, [("content-type", "application/grpc")], grpc_message(b"no"),
              trailers=[("grpc-status", "14"), ("grpc-message", "try%20later"), ("x-token", "t0ps3cret")])
    reset = c.request("/slow")
    c.client.reset_stream(reset, 8)
    c.flush()
    exchanges, _ = replay(c.wire, role=role)
    return exchanges


def test_json_lines_of_http2_and_grpc():
    page, call, reset = (json.loads(exchange_to_json(e, Redactor(["x-token"]))) for e in captured())
    assert list(page) == list(TOP_LEVEL_ORDER)
    request = page["request"]
    assert (request["method"], request["target"], request["version"]) == ("GET", "/page?x=1", "HTTP/2")
    assert request["headers"] == [[":method", "GET"], [":path", "/page?x=1"], [":scheme", "http"],
                                  [":authority", "example.test"], ["authorization", "Bearer [REDACTED]"],
                                  ["cookie", "sid=[REDACTED]; theme=[REDACTED]"]]
    assert (page["response"]["status"], page["response"]["reason"], page["response"]["version"]) == (200, "", "HTTP/2")
    assert page["response"]["headers"][-1] == ["set-cookie", "sid=[REDACTED]; Path=/"]
    assert (page["stream_id"], page["grpc"], page["reset_code"], page["flags"]) == (1, None, None, [])
    assert page["response"]["body"] == "<p>hi</p>" and page["request"]["trailers"] == []

    assert call["grpc"] == {"service": "shop.Cart", "method": "Add", "status": 14, "message": "try later",
                            "request_messages": 1, "response_messages": 1, "compressed": False}
    assert call["response"]["trailers"] == [["grpc-status", "14"], ["grpc-message", "try%20later"],
                                            ["x-token", "[REDACTED]"]]
    # The raw DATA, length prefixes included.
    assert (call["response"]["body"], call["response"]["body_encoding"]) == ("\u0000\u0000\u0000\u0000\u0002no", "utf-8")
    assert call["response"]["body_size"] == 7

    assert (reset["stream_id"], reset["reset_code"], reset["flags"], reset["response"]) == (5, 8, ["reset"], None)


def test_http1_chunked_trailers_fill_the_same_field():
    r = Reassembler()
    wire = Wire(r)
    wire.request(b"GET /t HTTP/1.1\r\nHost: x\r\n\r\n")
    wire.response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 9\r\n\r\n")
    [exchange] = r.drain()
    record = json.loads(exchange_to_json(exchange, Redactor()))
    assert record["response"]["trailers"] == [["X-Sum", "9"]]
    assert (record["stream_id"], record["grpc"], record["reset_code"]) == (None, None, None)


def render(exchange, verbosity=0) -> str:
    stream = io.StringIO()
    writer = make_writer("text", stream, OutputOptions(verbosity=verbosity))
    writer.write(exchange)
    writer.close()
    return stream.getvalue()


def test_text_marks_http2_and_grpc_status():
    page, call, reset = captured(Role.SERVER)
    line = render(page)
    assert " server <- 127.0.0.1:8080 GET /page?x=1 HTTP/2 200 " in line
    assert " POST /shop.Cart/Add HTTP/2 200 grpc=14 " in render(call)
    assert render(reset).rstrip().endswith("[reset]")
    details = render(call, verbosity=1).splitlines()
    assert "  > POST /shop.Cart/Add HTTP/2" in details and "  < HTTP/2 200" in details
    assert "  > :authority: example.test" in details
    assert "  < [trailer] grpc-status: 14" in details
    assert "Bearer s3cret" not in render(page, verbosity=2)


def test_har_of_http2():
    page, call, reset = captured()
    stream = io.BytesIO()
    writer = make_writer("har", stream, OutputOptions())
    for exchange in (page, call, reset):
        writer.write(exchange)
    writer.close()
    document = json.loads(stream.getvalue())
    validate(document)
    first, second, third = document["log"]["entries"]
    assert first["request"]["httpVersion"] == first["response"]["httpVersion"] == "HTTP/2.0"
    assert first["request"]["url"] == "http://example.test/page?x=1"
    assert first["request"]["headers"][:4] == [{"name": ":method", "value": "GET"}, {"name": ":path", "value": "/page?x=1"},
                                               {"name": ":scheme", "value": "http"},
                                               {"name": ":authority", "value": "example.test"}]
    assert ":status" not in [h["name"] for h in first["response"]["headers"]]
    assert first["request"]["headersSize"] == first["response"]["headersSize"] == -1
    assert first["request"]["cookies"] == [{"name": "sid", "value": "[REDACTED]"}, {"name": "theme", "value": "[REDACTED]"}]
    assert first["_stream_id"] == 1 and "_grpc" not in first
    assert second["_grpc"]["status"] == 14 and second["_grpc"]["service"] == "shop.Cart"
    assert second["response"]["_trailers"][0] == {"name": "grpc-status", "value": "14"}
    assert third["_reset_code"] == 8 and third["_flags"] == ["reset"]


def test_filters_match_grpc_status_and_http2_fields():
    page, call, reset = captured()
    assert [e.stream_id for e in (page, call, reset) if build_filter(statuses=["grpc:14"])(e)] == [3]
    assert [e.stream_id for e in (page, call, reset) if build_filter(statuses=["200"])(e)] == [1, 3]
    assert [e.stream_id for e in (page, call, reset) if build_filter(statuses=["grpc:0", "2xx"])(e)] == [1, 3]
    assert [e.stream_id for e in (page, call, reset) if build_filter(methods=["POST"], path="^/shop")(e)] == [3]
