from __future__ import annotations

import re

import pytest

from httptrace.exchange import Role
from httptrace.filters import (
    ExchangeFilter, FilterSpecError, build_filter, compile_path_regex, parse_grpc_statuses, parse_methods, parse_role,
    parse_statuses, split_list,
)

from .test_output_common import make_exchange, make_request, make_response


def test_split_list_accepts_repeats_and_commas():
    assert split_list(["GET,POST", " put ", "", "a,,b"]) == ["GET", "POST", "put", "a", "b"]


def test_parse_methods_uppercases_and_validates():
    assert parse_methods(["get,Post"]) == {"GET", "POST"}
    with pytest.raises(FilterSpecError):
        parse_methods(["GET POST"])


@pytest.mark.parametrize("spec, exact, classes", [
    (["500"], {500}, set()),
    (["5xx"], set(), {5}),
    (["5XX,404", "201"], {404, 201}, {5}),
    (["1xx,2xx,3xx,4xx"], set(), {1, 2, 3, 4}),
])
def test_parse_statuses(spec, exact, classes):
    assert parse_statuses(spec) == (exact, classes)


@pytest.mark.parametrize("bad", ["6xx", "99", "5x", "abc", "1000", "050", "5xxx", "grpc:", "grpc:x", "grpc:1000"])
def test_parse_statuses_rejects(bad):
    with pytest.raises(FilterSpecError, match=re.escape(repr(bad))):
        parse_statuses([bad])


def test_grpc_statuses_sit_beside_http_ones():
    assert parse_statuses(["grpc:14,404", "GRPC:0"]) == ({404}, set())
    assert parse_grpc_statuses(["grpc:14,404", "GRPC:0"]) == {14, 0}
    assert not build_filter(statuses=["grpc:0"]).accepts_everything
    # An HTTP/1 exchange has no gRPC status: a grpc-only filter drops it.
    assert not build_filter(statuses=["grpc:0"])(make_exchange())


def test_bad_regex_is_a_filter_error():
    with pytest.raises(FilterSpecError, match="invalid regular expression"):
        compile_path_regex("(")


def test_parse_role():
    assert parse_role("Client") is Role.CLIENT
    assert parse_role("server") is Role.SERVER
    for bad in ("unknown", "proxy"):
        with pytest.raises(FilterSpecError):
            parse_role(bad)


def test_empty_filter_accepts_everything():
    keep = build_filter()
    assert keep.accepts_everything
    assert keep(make_exchange()) and keep(make_exchange(response=None))


def test_method_filter():
    keep = build_filter(methods=["post,put"])
    assert keep(make_exchange(request=make_request(method="POST")))
    assert not keep(make_exchange(request=make_request(method="GET")))


def test_path_regex_is_searched_in_the_target_including_query():
    exchange = make_exchange(request=make_request(target="/api/v2/users?id=7"))
    assert build_filter(path="^/api/")(exchange)
    assert build_filter(path="users")(exchange)
    assert build_filter(path=r"id=\d+$")(exchange)
    assert not build_filter(path="^/users")(exchange)
    assert build_filter(path=re.compile("v2"))(exchange)


def test_status_filter_exact_and_class():
    keep = build_filter(statuses=["5xx", "404"])
    assert keep(make_exchange(response=make_response(status=503)))
    assert keep(make_exchange(response=make_response(status=404)))
    assert not keep(make_exchange(response=make_response(status=200)))
    assert not keep(make_exchange(response=None))   # no response, no status


def test_min_latency_boundary_and_missing_latency():
    keep = build_filter(min_latency_ms=12.345)       # the factory exchange takes exactly 12.345 ms
    assert keep(make_exchange())
    assert not build_filter(min_latency_ms=12.346)(make_exchange())
    assert not keep(make_exchange(response=None))
    assert build_filter(min_latency_ms=0)(make_exchange())


def test_negative_latency_is_rejected():
    with pytest.raises(FilterSpecError):
        build_filter(min_latency_ms=-1)


def test_role_filter():
    keep = build_filter(role="server")
    assert keep(make_exchange(role=Role.SERVER))
    assert not keep(make_exchange(role=Role.CLIENT))
    assert not keep(make_exchange(role=Role.UNKNOWN))
    assert build_filter(role=Role.CLIENT)(make_exchange(role=Role.CLIENT))


def test_criteria_combine_with_and():
    keep = build_filter(methods=["GET"], statuses=["2xx"], role="client", path="^/api")
    assert keep(make_exchange())
    assert not keep(make_exchange(request=make_request(method="POST")))
    assert not keep(make_exchange(response=make_response(status=500)))
    assert not ExchangeFilter(methods=frozenset({"GET"}), role=Role.SERVER)(make_exchange())
