"""Logging for every process (API and gunicorn, workers, work horses, scheduler, CLI): JSON or text lines
that carry the request, operation and tenant ids and the actor where known, with credentials redacted.

Settings: `LOG_FORMAT` = `json` | `text` (default text; the image sets json), `LOG_LEVEL` (default INFO
for the processes, WARNING for the other CLI commands).
"""
from __future__ import annotations

import contextvars
import logging
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from gunicorn.glogging import Logger as GunicornBaseLogger
from pythonjsonlogger.json import JsonFormatter

from control_plane.settings import logging_settings

# The ids a log line carries when they are known, bound for the current request or job.
CONTEXT_FIELDS = ("request_id", "operation_id", "tenant_id", "actor")
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("control_plane_log_context", default={})

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# scheme://user:password@host → scheme://user:***@host, whatever library wrote the line.
# (A password may hold "/": over-redacting "host:port/path@x" is the lesser harm.)
_URL_CREDENTIALS = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s]+@")


def redact(text: str) -> str:
    return _URL_CREDENTIALS.sub(r"\g<head>***@", text)


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Bind ids (request_id, operation_id, tenant_id, actor) to every line logged inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: str | None) -> None:
    """Add ids to the current context (for the rest of a request: contextvars are per thread/task)."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})


def current(name: str) -> str | None:
    return _context.get().get(name)


def clear() -> None:
    _context.set({})


class ContextFilter(logging.Filter):
    """Adds the bound ids to the record, unpacks gunicorn's access atoms, and redacts credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            atoms = record.args
            record.http_method = atoms.get("m")
            record.path = atoms.get("U")
            record.status = atoms.get("s")
            record.duration_ms = round(int(atoms.get("D") or 0) / 1000, 1)
            request_id = atoms.get("{x-request-id}o")
            if request_id and request_id != "-":
                record.request_id = request_id
        try:
            message = record.getMessage()
        except Exception:  # a malformed call; logging reports it when it formats the record
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class _Redacting:
    def formatException(self, ei) -> str:  # noqa: N802  (logging's name)
        return redact(super().formatException(ei))  # type: ignore[misc]


class TextFormatter(_Redacting, logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name, None))
        return f"{line} [{ids}]" if ids else line


class JsonLineFormatter(_Redacting, JsonFormatter):
    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s", timestamp=True,
                         rename_fields={"levelname": "level", "name": "logger"})


def configure_logging(default_level: str = "INFO", environ: Mapping[str, str] | None = None) -> None:
    """One handler on the root logger, to stderr, for the whole process (idempotent)."""
    log_format, level = logging_settings(environ, default_level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    handler._control_plane = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_control_plane", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that would otherwise install their own handlers or flood DEBUG with wire traffic.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelNamesMapping()[level]))


class GunicornLogger(GunicornBaseLogger):
    """gunicorn's error and access logs through our root handler (JSON, ids, redaction)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        configure_logging()
        for logger in (self.error_log, self.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
