"""Header redaction: the stage between a captured Exchange and any output.

Captures end up in tickets and chat threads, so credentials are masked by default.
What is kept is what helps debugging without being a secret: the Authorization
scheme ("Bearer [REDACTED]"), cookie names and Set-Cookie attributes
("sid=[REDACTED]; Path=/; HttpOnly").  Any other header named for redaction loses
its whole value.  Bodies and query strings are not touched.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Callable

REDACTED = "[REDACTED]"

# Headers masked unless --no-redact; more are added with --redact NAME.
DEFAULT_REDACTED_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie")

# An auth scheme is an RFC 9110 token; anything longer or odder is treated as all secret.
_AUTH_SCHEME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,40}")

# Header names repeat across exchanges: remember how each spelling is handled, but not
# without bound, since header names are chosen by whoever sends the traffic.
_CACHE_LIMIT = 4096


def redact_authorization(value: str) -> str:
    """Keep the scheme ("Basic", "Bearer", "AWS4-HMAC-SHA256"...), mask the credentials."""
    scheme, sep, rest = value.strip().partition(" ")
    if sep and rest and _AUTH_SCHEME.fullmatch(scheme):
        return f"{scheme} {REDACTED}"
    return REDACTED


def redact_cookie(value: str) -> str:
    """Cookie: a=1; b=2  ->  a=[REDACTED]; b=[REDACTED]"""
    parts = []
    for pair in value.split(";"):
        name, sep, _ = pair.strip().partition("=")
        parts.append(f"{name}={REDACTED}" if sep and name else REDACTED)
    return "; ".join(parts)


def redact_set_cookie(value: str) -> str:
    """Set-Cookie: sid=abc; Path=/; HttpOnly  ->  sid=[REDACTED]; Path=/; HttpOnly"""
    first, sep, attributes = value.partition(";")
    name, eq, _ = first.strip().partition("=")
    masked = f"{name}={REDACTED}" if eq and name else REDACTED
    return f"{masked};{attributes}" if sep else masked


def _redact_whole(value: str) -> str:
    return REDACTED


_MASKERS = {
    "authorization": redact_authorization,
    "proxy-authorization": redact_authorization,
    "cookie": redact_cookie,
    "set-cookie": redact_set_cookie,
}


_UNSEEN = object()
_Masker = Callable[[str], str]


class Redactor:
    """Masks the values of sensitive headers; a disabled Redactor returns headers unchanged."""

    __slots__ = ("enabled", "names", "plain", "_masker_by_spelling")

    def __init__(self, extra_names: Iterable[str] = (), *, enabled: bool = True,
                 defaults: Iterable[str] = DEFAULT_REDACTED_HEADERS):
        self.enabled = enabled
        self.names = frozenset(n.strip().lower() for n in (*defaults, *extra_names) if n.strip())
        # header name exactly as seen on the wire -> masking function, or None when not sensitive
        self._masker_by_spelling: dict[str, _Masker | None] = {}
        # the spellings among those that are not sensitive: `plain.issuperset(names)` tells, in C,
        # that a message's headers need no masking (the JSON writer's test)
        self.plain: set[str] = set()

    def _masker(self, name: str) -> _Masker | None:
        try:
            return self._masker_by_spelling[name]
        except KeyError:
            lname = name.lower()
            masker = _MASKERS.get(lname, _redact_whole) if lname in self.names else None
            if len(self._masker_by_spelling) >= _CACHE_LIMIT:
                self._masker_by_spelling.clear()
                self.plain.clear()
            self._masker_by_spelling[name] = masker
            if masker is None:
                self.plain.add(name)
            return masker

    def is_sensitive(self, name: str) -> bool:
        return self.enabled and self._masker(name) is not None

    def value(self, name: str, value: str) -> str:
        """The value to show for one header."""
        if not self.enabled:
            return value
        masker = self._masker(name)
        return value if masker is None else masker(value)

    def headers(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """Headers with sensitive values masked; the same tuple when nothing needs masking
        (the common case, and the one the JSON fast path relies on)."""
        if not self.enabled:
            return headers
        known = self._masker_by_spelling.get   # the usual case: every name seen before, none sensitive
        for name, _ in headers:
            if known(name, _UNSEEN) is not None:
                break
        else:
            return headers
        masker_of = self._masker
        for index, (name, _) in enumerate(headers):
            if masker_of(name) is not None:
                break
        else:
            return headers
        masked = list(headers[:index])
        for name, value in headers[index:]:
            masker = masker_of(name)
            masked.append((name, value) if masker is None else (name, masker(value)))
        return tuple(masked)


NO_REDACTION = Redactor(enabled=False)
