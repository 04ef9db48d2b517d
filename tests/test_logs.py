"""One log schema for every command: the webhook, the agent, the page and the certificate tool
all write the same keys, so one pipeline reads them all."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from webhook import logs

REPO = Path(__file__).resolve().parent.parent


def test_every_project_logger_writes_the_one_schema(capsys) -> None:
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in logs.PROJECT_LOGGERS}
    try:
        logs.configure("info")
        logging.getLogger("webhook.agent.crash").warning("crash", extra={"pod": "web-0", "container": "app",
                                                                         "pid": 7})
        logging.getLogger("webhook.server.app").info("admission", extra={"uid": "u-1"})
        logging.getLogger("webhook.inspect.page_server").info("page request", extra={"user": "alice"})
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


def _get_logger_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"]


def test_every_module_logs_under_its_module_name() -> None:
    """One naming scheme: ``logging.getLogger(__name__)`` in every module, so ``logger`` says
    which module wrote a line and the one ``webhook`` logger that configure() sets up covers all."""
    calls = {path: _get_logger_calls(path) for root in (REPO / "webhook", REPO / "certs")
             for path in sorted(root.rglob("*.py")) if path != REPO / "webhook" / "logs.py"}
    assert sum(len(found) for found in calls.values()) > 30
    other = [f"{path.relative_to(REPO)}:{call.lineno}" for path, found in calls.items() for call in found
             if not (len(call.args) == 1 and not call.keywords
                     and isinstance(call.args[0], ast.Name) and call.args[0].id == "__name__")]
    assert other == []


def test_the_certificate_code_logs_inside_the_project_namespace() -> None:
    """The certs/ folder is installed as webhook.certs: its lines are covered by ``webhook``."""
    from webhook.certs import kube
    from webhook.inspect import page_server

    assert logs.PROJECT_LOGGERS == ("webhook",)
    assert kube.log.name == "webhook.certs.kube"
    assert page_server.log.name == "webhook.inspect.page_server"


def test_no_call_passes_a_field_the_log_record_already_has() -> None:
    """``extra={"message": ...}`` makes logging raise instead of writing the line (the agent once
    lost its warning about a bad helper message that way): no literal ``extra`` key may be one of
    the LogRecord's own attributes."""
    reserved = set(logging.LogRecord("n", logging.INFO, __file__, 1, "", None, None).__dict__) | {"message", "asctime"}
    seen, clashes = 0, []
    for root in (REPO / "webhook", REPO / "certs"):
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.keyword) and node.arg == "extra" and isinstance(node.value, ast.Dict):
                    for key in node.value.keys:
                        if isinstance(key, ast.Constant):
                            seen += 1
                            if key.value in reserved:
                                clashes.append(f"{path.relative_to(REPO)}:{key.lineno} {key.value!r}")
    assert seen > 50 and clashes == []
