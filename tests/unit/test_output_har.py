from __future__ import annotations

import base64
import gzip
import io
import json
import pathlib
from urllib.parse import urlsplit

import jsonschema
import pytest
from hypothesis import given, settings

from httptrace.exchange import Flag, Role
from httptrace.output import OutputOptions, make_writer
from httptrace.output.har import TRAILER, HarWriter, exchange_to_har_entry, request_url
from httptrace.redact import NO_REDACTION, Redactor

from .test_output_common import exchanges, make_exchange, make_request, make_response

SCHEMA = json.loads((pathlib.Path(__file__).parent / "har-1.2.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


def validate(document: dict) -> None:
    VALIDATOR.validate(document)
    for entry in document["log"]["entries"]:
        url = urlsplit(entry["request"]["url"])
        assert url.scheme in ("http", "https") and url.netloc, entry["request"]["url"]


def entry(exchange, redactor=None, include_bodies=True) -> dict:
    return exchange_to_har_entry(exchange, redactor or Redactor(), include_bodies)


def har_of(*exchanges_, **options) -> dict:
    stream = io.BytesIO()
    writer = make_writer("har", stream, OutputOptions(**options))
    for exchange in exchanges_:
        writer.write(exchange)
    writer.close()
    return json.loads(stream.getvalue())


def test_schema_rejects_what_it_should():
    document = har_of(make_exchange())
    validate(document)
    broken = json.loads(json.dumps(document))
    del broken["log"]["entries"][0]["timings"]["wait"]
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)
    broken = json.loads(json.dumps(document))
    broken["log"]["entries"][0]["request"]["extra"] = 1    # custom fields need a leading "_"
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)


def test_empty_capture_is_a_valid_har():
    document = har_of()
    validate(document)
    assert document["log"]["entries"] == []
    assert document["log"]["version"] == "1.2" and document["log"]["creator"]["name"] == "httptrace"


def test_a_mixed_capture_validates():
    document = har_of(
        make_exchange(),
        make_exchange(response=None, flags=[Flag.INCOMPLETE]),
        make_exchange(tls=True, remote=("2001:db8::1", 8443), request=make_request(headers=())),
        make_exchange(response=make_response(headers=(("Content-Encoding", "gzip"),),
                                             body=gzip.compress(b"x" * 1000))),
        make_exchange(response=make_response(body=bytes(range(256)))),
        make_exchange(request=make_request(method="POST", body=b"\xff\x00binary"), role=Role.SERVER),
        make_exchange(response=make_response(body=b"abc", body_size=10_000, truncated=True),
                      flags=[Flag.TRUNCATED]),
    )
    validate(document)
    assert len(document["log"]["entries"]) == 7


@settings(max_examples=150, deadline=None)
@given(exchange=exchanges())
def test_any_exchange_gives_a_valid_entry(exchange):
    validate(har_of(exchange))
    validate(har_of(exchange, include_bodies=False))


def test_entry_fields():
    har = entry(make_exchange(flags=[Flag.GAP]))
    assert har["startedDateTime"] == "2026-11-24T20:31:07.123456Z"
    assert har["timings"]["send"] == 0.1 and har["timings"]["wait"] == 11.9 and har["timings"]["receive"] == 0.345
    assert har["time"] == 12.345
    assert har["serverIPAddress"] == "93.184.216.34" and har["connection"] == "51234"
    assert (har["_pid"], har["_comm"], har["_role"], har["_flags"]) == (4242, "curl", "client", ["gap"])
    assert har["request"]["queryString"] == [{"name": "id", "value": "7"}]
    assert har["request"]["headers"][0] == {"name": "Host", "value": "example.com"}
    # "GET /api/users?id=7 HTTP/1.1\r\n" + 3 headers + "\r\n"
    assert har["request"]["headersSize"] == 30 + len("Host: example.com\r\n") + \
        len("User-Agent: curl/8.5.0\r\n") + len("Accept: */*\r\n") + 2
    response = har["response"]
    assert (response["status"], response["statusText"], response["bodySize"]) == (200, "OK", 11)
    assert response["content"] == {"size": 11, "mimeType": "application/json", "text": '{"ok":true}'}


def test_server_role_addresses():
    har = entry(make_exchange(role=Role.SERVER, local=("10.0.0.1", 8080), remote=("10.0.0.9", 40000)))
    assert har["serverIPAddress"] == "10.0.0.1" and har["connection"] == "40000"


@pytest.mark.parametrize("kwargs, url", [
    ({}, "http://example.com/api/users?id=7"),
    ({"tls": True}, "https://example.com/api/users?id=7"),
    ({"request": make_request(headers=(), target="/x")}, "http://93.184.216.34/x"),
    ({"request": make_request(headers=(), target="/x"), "remote": ("93.184.216.34", 8080)},
     "http://93.184.216.34:8080/x"),
    ({"request": make_request(headers=(), target="/x"), "remote": ("::1", 8080)}, "http://[::1]:8080/x"),
    ({"request": make_request(headers=(), target="/x"), "remote": ("::1", 443), "tls": True}, "https://[::1]/x"),
    ({"request": make_request(headers=(), target="/x"), "remote": None}, "http://unknown-host/x"),
    ({"request": make_request(target="http://other.example/p?q=1")}, "http://other.example/p?q=1"),
    ({"request": make_request(method="CONNECT", target="db.example:443")}, "http://example.com/"),
    ({"request": make_request(target="/caf\xe9 x")}, "http://example.com/caf%E9%20x"),
    ({"request": make_request(headers=(), target="/x"), "role": Role.SERVER, "local": ("10.1.1.1", 80)},
     "http://10.1.1.1/x"),
])
def test_request_url(kwargs, url):
    assert request_url(make_exchange(**kwargs)) == url


def test_cookies_are_redacted_like_headers():
    request = make_request(headers=(("Host", "h"), ("Cookie", "sid=abc; theme=dark")))
    response = make_response(headers=(
        ("Set-Cookie", "sid=new; Path=/; Domain=h; HttpOnly; Secure; Expires=Wed, 21 Oct 2026 07:28:00 GMT"),))
    exchange = make_exchange(request=request, response=response)
    har = entry(exchange)
    assert har["request"]["cookies"] == [{"name": "sid", "value": "[REDACTED]"},
                                         {"name": "theme", "value": "[REDACTED]"}]
    assert har["response"]["cookies"] == [{"name": "sid", "value": "[REDACTED]", "path": "/", "domain": "h",
                                           "httpOnly": True, "secure": True,
                                           "expires": "2026-10-21T07:28:00+00:00"}]
    assert "abc" not in json.dumps(har) and "new" not in json.dumps(har)
    plain = entry(exchange, NO_REDACTION)
    assert plain["request"]["cookies"][0]["value"] == "abc"


def test_gzip_content_is_decoded_with_compression():
    plain = b'{"a": 1}' * 100
    raw = gzip.compress(plain)
    har = entry(make_exchange(response=make_response(headers=(("Content-Encoding", "gzip"),), body=raw)))
    content = har["response"]["content"]
    assert content["text"] == plain.decode()
    assert content["size"] == len(plain) and content["compression"] == len(plain) - len(raw)
    assert har["response"]["bodySize"] == len(raw)


def test_binary_bodies_are_base64():
    body = bytes(range(256))
    har = entry(make_exchange(response=make_response(body=body),
                              request=make_request(method="PUT", body=b"\xff\xfe")))
    assert har["response"]["content"]["encoding"] == "base64"
    assert base64.b64decode(har["response"]["content"]["text"]) == body
    assert har["request"]["postData"]["_encoding"] == "base64"
    assert base64.b64decode(har["request"]["postData"]["text"]) == b"\xff\xfe"


def test_no_body_keeps_sizes_only():
    har = entry(make_exchange(request=make_request(method="POST", body=b"a=1")), include_bodies=False)
    assert "text" not in har["request"]["postData"] and "text" not in har["response"]["content"]
    assert har["request"]["bodySize"] == 3 and har["response"]["content"]["size"] == 11


def test_truncated_body_is_commented():
    response = make_response(body=b"abc", body_size=5000, truncated=True)
    content = entry(make_exchange(response=response))["response"]["content"]
    assert content["size"] == 5000 and content["text"] == "abc"
    assert content["comment"] == "body truncated by capture: 3 of 5000 bytes"


def test_missing_response_is_status_zero():
    har = entry(make_exchange(response=None, flags=[Flag.INCOMPLETE]))
    assert har["response"]["status"] == 0 and har["response"]["comment"] == "no response captured"
    assert har["timings"]["wait"] == har["timings"]["receive"] == 0
    assert har["comment"] == "httptrace flags: incomplete"


def test_file_is_valid_after_every_entry(tmp_path):
    path = tmp_path / "capture.har"
    with open(path, "wb") as stream:
        writer = HarWriter(stream, OutputOptions())
        validate(json.loads(path.read_bytes()))
        for count in range(1, 6):
            writer.write(make_exchange(request=make_request(target=f"/n/{count}")))
            document = json.loads(path.read_bytes())      # no close(): as if killed right here
            validate(document)
            assert [e["request"]["url"][-1] for e in document["log"]["entries"]] == \
                [str(i) for i in range(1, count + 1)]
        writer.close()
    assert path.read_bytes().endswith(TRAILER)


def test_unseekable_stream_gets_its_trailer_on_close():
    class Pipe(io.BytesIO):
        def seekable(self):
            return False

    stream = Pipe()
    writer = HarWriter(stream, OutputOptions())
    writer.write(make_exchange())
    writer.write(make_exchange())
    assert not stream.getvalue().endswith(TRAILER)
    writer.close()
    writer.close()   # idempotent
    validate(json.loads(stream.getvalue()))
    assert stream.getvalue().count(TRAILER) == 1


def test_append_mode_file_is_not_rewritten(tmp_path):
    path = tmp_path / "a.har"
    with open(path, "ab") as stream:
        writer = HarWriter(stream, OutputOptions())
        writer.write(make_exchange())
        writer.close()
    document = json.loads(path.read_bytes())
    validate(document)
    assert len(document["log"]["entries"]) == 1


def test_url_with_characters_beyond_latin1():
    assert request_url(make_exchange(request=make_request(target="/\u20ac"))) == "http://example.com/%E2%82%AC"


@pytest.mark.parametrize("host, url", [
    ("[", "http://%5B/x"),
    ("evil.example@good.example", "http://evil.example%40good.example/x"),
    ("a/b?c#d:81", "http://a%2Fb%3Fc%23d:81/x"),
    ("[2001:db8::1]:8080", "http://[2001:db8::1]:8080/x"),
    ("host:99999999", "http://host%3A99999999/x"),
    (":80", "http://93.184.216.34/x"),        # nothing usable: the server address
    (" example.com:8080 ", "http://example.com:8080/x"),
])
def test_malformed_host_headers_cannot_change_the_url(host, url):
    exchange = make_exchange(request=make_request(headers=(("Host", host),), target="/x"))
    assert request_url(exchange) == url
    assert urlsplit(url).netloc


def test_absolute_form_authority_is_sanitised_too():
    exchange = make_exchange(request=make_request(target="HTTP://[oops?q=1"))
    assert request_url(exchange) == "http://%5Boops/?q=1"
