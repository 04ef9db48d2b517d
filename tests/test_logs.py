"""One log schema for every command: the webhook, the agent, the page and the certificate tool
all write the same keys, so one pipeline reads them all."""

from __future__ import annotations

import json
import logging

from webhook import logs


def test_every_project_logger_writes_the_one_schema(capsys) -> None:
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in logs.PROJECT_LOGGERS}
    try:
        logs.configure("info")
        logging.getLogger("webhook.agent.crash").warning("crash", extra={"pod": "web-0", "container": "app",
                                                                         "pid": 7})
        logging.getLogger("webhook.server.app").info("admission", extra={"uid": "u-1"})
        logging.getLogger("coredump.page").info("page request", extra={"user": "alice"})
        logging.getLogger("webhook.certs.kube").debug("not at info")
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [tuple(line)[:4] for line in lines] == [logs.SCHEMA] * 3
    assert [(line["level"], line["message"]) for line in lines] == [
        ("warning", "crash"), ("info", "admission"), ("info", "page request")]
    assert lines[0] | {"time": None} == {"time": None, "level": "warning", "logger": "webhook.agent.crash",
                                         "message": "crash", "pod": "web-0", "container": "app", "pid": 7}
