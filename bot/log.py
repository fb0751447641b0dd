"""Structured logs (structlog, one JSON object a line) with secrets taken out before they are written.

Two guards, because one forgotten `token=` is enough to leak: any key that names a secret has its
value replaced, and the clear text of every configured secret is masked wherever it appears in a
value (an exception message, a URL, a dict that was logged whole).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import structlog

MASK = "***"
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|authorization|private_key|bearer|cookie)", re.I)
# Tokens that look like Slack's or OpenShift's, even if they were never configured.
_SECRET_VALUE = re.compile(r"(xox[abposr]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|sha256~[A-Za-z0-9_-]{20,})")


class Redactor:
    """A structlog processor that masks secrets in keys and values, recursively."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _text(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _SECRET_VALUE.sub(MASK, text)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, Mapping):
            return {k: MASK if _SECRET_KEY.search(str(k)) else self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._value(v) for v in value]
        if isinstance(value, BaseException):
            return self._text(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            event[key] = MASK if _SECRET_KEY.search(key) else self._value(event[key])
        return event


def configure_logging(*, level: str = "INFO", secrets: Iterable[str] = (), stream: Any = None) -> None:
    """Sets up structlog and routes the standard library's loggers (Bolt, asyncssh) through the same redactor."""
    redactor = Redactor(secrets)
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redactor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redactor,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # asyncssh is chatty at INFO (every channel open); its warnings still come through.
    logging.getLogger("asyncssh").setLevel(max(numeric, logging.WARNING))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
