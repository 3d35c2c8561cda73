"""grpc: call names, message counting across arbitrary DATA boundaries, status text."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from httptrace.grpc import MessageCounter, percent_decoded, service_and_method

from .h2wire import grpc_message


@pytest.mark.parametrize("path, expected", [
    ("/helloworld.Greeter/SayHello", ("helloworld.Greeter", "SayHello")),
    ("/Svc/M", ("Svc", "M")),
    ("/a.b.c.Svc/Method?x=1", ("a.b.c.Svc", "Method")),
    ("/", (None, None)), ("/only", (None, None)), ("/a/b/c", (None, None)), ("x/y", (None, None)),
    (None, (None, None)), ("//M", (None, None)),
])
def test_service_and_method(path, expected):
    assert service_and_method(path) == expected


@given(st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=12), st.lists(st.integers(1, 400)))
def test_messages_are_counted_whatever_the_cuts(messages, cuts):
    body = b"".join(grpc_message(payload, compressed) for payload, compressed in messages)
    counter = MessageCounter()
    at = 0
    for size in cuts:
        counter.feed(body, at, min(len(body), at + size))
        at = min(len(body), at + size)
    counter.feed(body, at, len(body))
    assert counter.messages == len(messages)
    assert counter.compressed == any(compressed for _, compressed in messages)
    assert counter.synced


def test_missing_bytes_inside_a_message_keep_count_elsewhere_they_stop_it():
    body = grpc_message(b"x" * 100) + grpc_message(b"y")
    counter = MessageCounter()
    counter.feed(body, 0, 10)
    counter.skip(50)                          # inside the first message's payload
    counter.feed(body, 60, len(body))
    assert (counter.messages, counter.synced) == (2, True)
    counter = MessageCounter()
    counter.feed(body, 0, 2)
    counter.skip(3)                           # where the prefix was
    counter.feed(body, 5, len(body))
    assert (counter.messages, counter.synced) == (0, False)


def test_grpc_message_is_percent_decoded_utf8():
    assert percent_decoded("not%20found%3A%20%E2%9C%97") == "not found: \u2717"
    assert percent_decoded("100% done") == "100% done"          # not an escape: kept
    assert percent_decoded("bad%FFutf8") == "bad%FFutf8"         # invalid UTF-8: shown as sent
    assert percent_decoded("plain") == "plain"
