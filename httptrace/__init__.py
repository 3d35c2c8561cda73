"""httptrace: whole HTTP sessions of the processes on a Linux host, captured with eBPF.

    from httptrace import Tracer

    with Tracer(ports=[8080]) as tracer:
        for exchange in tracer.exchanges():
            print(exchange.request.method, exchange.request.target, exchange.latency_ns)

The names below are the public API (docs/api.md); every other module and name is private. The library
logs through the standard `logging` module under the `httptrace` logger and prints nothing itself.

`Tracer` (it needs the compiled libbpf binding), the reassembler and the raw event types are imported
on first use, so that `import httptrace` and `httptrace --help` stay fast and work without the binding.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from httptrace.errors import EnvironmentProblem, HttptraceError, LibbpfError
from httptrace.exchange import Connection, Endpoint, Exchange, Flag, Message, Role

if TYPE_CHECKING:
    from httptrace.events import Close, Data, DataFlags, Direction, Open, RoleHint
    from httptrace.sessions import Reassembler
    from httptrace.tracer import Tracer

    __version__: str

__all__ = [
    "Tracer",
    # what Tracer.exchanges() yields
    "Exchange", "Message", "Connection", "Endpoint", "Role", "Flag",
    # what Tracer.events() yields
    "Open", "Data", "Close", "Direction", "DataFlags", "RoleHint",
    # events in, exchanges out, without the kernel
    "Reassembler",
    "HttptraceError", "EnvironmentProblem", "LibbpfError",
    "__version__",
]

_LAZY = {
    "Tracer": "httptrace.tracer",
    "Reassembler": "httptrace.sessions",
    "Open": "httptrace.events", "Data": "httptrace.events", "Close": "httptrace.events",
    "Direction": "httptrace.events", "DataFlags": "httptrace.events", "RoleHint": "httptrace.events",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("httptrace")
    except PackageNotFoundError:   # running from a checkout that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'httptrace' has no attribute {name!r}")
    globals()[name] = value   # found once; later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__")})
