from __future__ import annotations

from hypothesis import given, strategies as st

from httptrace import redact
from httptrace.redact import (
    NO_REDACTION, REDACTED, Redactor, redact_authorization, redact_cookie, redact_set_cookie,
)


def test_authorization_keeps_the_scheme():
    assert redact_authorization("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig") == "Bearer [REDACTED]"
    assert redact_authorization("Basic dXNlcjpwYXNz") == "Basic [REDACTED]"
    assert redact_authorization("AWS4-HMAC-SHA256 Credential=AKIA/2026, Signature=abc") == \
        "AWS4-HMAC-SHA256 [REDACTED]"


def test_authorization_without_a_scheme_is_masked_whole():
    assert redact_authorization("s3cr3t-token") == REDACTED
    assert redact_authorization("") == REDACTED
    assert redact_authorization("Bearer") == REDACTED          # nothing after the scheme: still hide it
    assert redact_authorization("{weird} secret") == REDACTED  # not a token: do not echo it


def test_cookie_keeps_names_only():
    assert redact_cookie("sid=abc123; theme=dark") == "sid=[REDACTED]; theme=[REDACTED]"
    assert redact_cookie("justavalue") == REDACTED


def test_set_cookie_keeps_name_and_attributes():
    assert redact_set_cookie("sid=abc123; Path=/; HttpOnly; Secure") == "sid=[REDACTED]; Path=/; HttpOnly; Secure"
    assert redact_set_cookie("sid=abc123") == "sid=[REDACTED]"
    assert redact_set_cookie("garbage") == REDACTED


def test_default_headers_are_redacted_case_insensitively():
    headers = (("authorization", "Bearer abc"), ("PROXY-AUTHORIZATION", "Basic xyz"),
               ("Cookie", "a=1"), ("set-cookie", "b=2; Path=/"), ("Accept", "*/*"))
    assert Redactor().headers(headers) == (
        ("authorization", "Bearer [REDACTED]"), ("PROXY-AUTHORIZATION", "Basic [REDACTED]"),
        ("Cookie", "a=[REDACTED]"), ("set-cookie", "b=[REDACTED]; Path=/"), ("Accept", "*/*"))


def test_extra_headers_lose_their_whole_value():
    redactor = Redactor(["X-Api-Key", " x-auth-token "])
    headers = (("x-api-key", "k-123"), ("X-Auth-Token", "t 456"), ("Authorization", "Bearer z"))
    assert redactor.headers(headers) == (
        ("x-api-key", REDACTED), ("X-Auth-Token", REDACTED), ("Authorization", "Bearer [REDACTED]"))
    assert redactor.is_sensitive("X-API-KEY") and not redactor.is_sensitive("Accept")


def test_nothing_to_redact_returns_the_same_tuple():
    headers = (("Host", "a"), ("Accept", "*/*"))
    assert Redactor().headers(headers) is headers
    assert Redactor().headers(()) == ()


def test_disabled_redactor_changes_nothing():
    headers = (("Authorization", "Bearer abc"),)
    assert NO_REDACTION.headers(headers) is headers
    assert Redactor(enabled=False).value("Cookie", "a=1") == "a=1"
    assert not NO_REDACTION.is_sensitive("Authorization")


def test_order_and_repeats_are_kept():
    headers = (("Accept", "1"), ("Set-Cookie", "a=1"), ("X", "2"), ("Set-Cookie", "b=2"))
    assert [n for n, _ in Redactor().headers(headers)] == ["Accept", "Set-Cookie", "X", "Set-Cookie"]
    assert Redactor().headers(headers)[3] == ("Set-Cookie", "b=[REDACTED]")


def test_spelling_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(redact, "_CACHE_LIMIT", 10)
    redactor = Redactor()
    for i in range(100):
        redactor.value(f"X-Header-{i}", "v")
    assert len(redactor._masker_by_spelling) <= 10
    assert redactor.value("Authorization", "Bearer t") == "Bearer [REDACTED]"


_secret = st.text(alphabet="0123456789abcdef", min_size=8, max_size=40)
_name = st.text(alphabet="ghijklmnopqrstuvwxyz", min_size=1, max_size=10)


@given(secret=_secret, scheme=st.sampled_from(["Bearer", "Basic", "Digest", ""]))
def test_authorization_secret_never_survives(secret, scheme):
    value = f"{scheme} {secret}" if scheme else secret
    for header in ("Authorization", "proxy-authorization"):
        assert secret not in Redactor().value(header, value)


@given(pairs=st.lists(st.tuples(_name, _secret), min_size=1, max_size=5), attributes=st.booleans())
def test_cookie_values_never_survive(pairs, attributes):
    cookie = "; ".join(f"{n}={v}" for n, v in pairs)
    set_cookie = f"{pairs[0][0]}={pairs[0][1]}" + ("; Path=/; HttpOnly" if attributes else "")
    masked = Redactor().headers((("Cookie", cookie), ("Set-Cookie", set_cookie)))
    for _, value in pairs:
        assert value not in masked[0][1]
    assert pairs[0][1] not in masked[1][1]
    assert masked[0][1].count(REDACTED) == len(pairs)


@given(headers=st.lists(st.tuples(st.sampled_from(["Host", "Accept", "Cookie", "Authorization", "X-K"]),
                                  st.text(max_size=20)), max_size=8))
def test_redaction_keeps_shape_and_leaves_other_headers_alone(headers):
    headers = tuple(headers)
    masked = Redactor(["x-k"]).headers(headers)
    assert [n for n, _ in masked] == [n for n, _ in headers]
    for (name, value), (_, shown) in zip(headers, masked):
        if name in ("Host", "Accept"):
            assert shown == value
