"""Structured JSON logs: one object per line on stderr, for every command of the project."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

#: Attributes every LogRecord has; anything else passed with ``extra=`` becomes a JSON field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


#: The project's one logger namespace. Every module logs to ``logging.getLogger(__name__)``, so a
#: line's ``logger`` names the module that wrote it (``webhook.agent.crash``, ``webhook.certs.kube``:
#: the certificate code is installed as ``webhook.certs``), and configuring ``webhook`` covers all.
PROJECT_LOGGERS = ("webhook",)


#: The keys every line has, for every command (webhook, agent, page, certificates); whatever a
#: call passes with ``extra=`` (pod, container, pid on crash lines) follows as more keys.
SCHEMA = ("time", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ``time`` (UTC, ms), ``level`` (lower case),
    ``logger``, ``message``, then the ``extra`` fields and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "info", *, root: bool = False) -> None:
    """Send the project's loggers (or, with ``root``, every logger) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("",) if root else PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = root


def gunicorn_logconfig(level: str = "info") -> dict[str, Any]:
    """A ``logconfig_dict`` that makes gunicorn's own error log JSON too (access log off)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "webhook.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }
