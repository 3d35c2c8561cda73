"""Where httptrace's diagnostics go: the standard `logging` module, under the `httptrace` logger.

A library must not print unless asked. These structlog loggers never use structlog's global
configuration (that is the application's): each event goes to `logging.getLogger(name)` at its level,
so an application configures httptrace's output as it configures everything else. With logging left
unconfigured, Python shows warnings and errors on stderr and nothing else.

A record's message reads `event key=value ...`; the structured event itself (a dict: 'event' and the
key-value pairs) is the record's `httptrace_event` attribute, for handlers that render fields, like
the CLI's (cli.configure_logging).
"""
from __future__ import annotations

import logging
from typing import Any, MutableMapping

import structlog

EVENT_ATTRIBUTE = "httptrace_event"


def _value_text(value: object) -> str:
    text = str(value)
    return text if text and " " not in text and "=" not in text else repr(value)


def _to_logging(logger: object, method_name: str,
                event_dict: MutableMapping[str, Any]) -> tuple[tuple[str], dict[str, Any]]:
    """The last processor: (message,) and the keyword arguments of logging.Logger.<level>()."""
    fields = dict(event_dict)
    text = str(fields.get("event", ""))
    pairs = " ".join(f"{key}={_value_text(value)}" for key, value in fields.items()
                     if key not in ("event", "exc_info"))
    return ((f"{text} {pairs}" if pairs else text),), {
        "exc_info": fields.get("exc_info"),   # logging formats the traceback itself
        "extra": {EVENT_ATTRIBUTE: fields},
    }


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """The structlog logger of one httptrace module (`name` is under 'httptrace')."""
    # filter_by_level first: an event below the logger's level costs one comparison, nothing more.
    return structlog.stdlib.BoundLogger(logging.getLogger(name),
                                        [structlog.stdlib.filter_by_level, _to_logging], {})
