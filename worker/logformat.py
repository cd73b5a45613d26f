"""``LOG_FORMAT=json``: one JSON object per log line, for the worker, beat and the CLI.

Each object has ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``,
``message`` and ``process`` (Celery's ``MainProcess`` or ``ForkPoolWorker-N``),
plus ``order_id``, ``task_id`` and ``node`` when known: from the record's
``extra`` first, else (order and task) from the Celery task running in this
process. A traceback goes in ``exception``. The default, ``text``, leaves
Celery's own format untouched.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

CONTEXT_FIELDS = ("order_id", "task_id", "node")


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        entry.update(_task_context())
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def _task_context() -> dict[str, str]:
    """Return the running Celery task's id and order id (empty outside a task)."""
    from celery import current_task

    try:
        request = current_task.request if current_task else None
    except Exception:  # logging must never raise
        return {}
    if request is None or request.id is None:
        return {}
    context = {"task_id": str(request.id)}
    order_id = (request.kwargs or {}).get("order_id")
    if isinstance(order_id, str) and len(order_id) <= 64:
        context["order_id"] = order_id
    return context


def use_json(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def json_say(msg: str, f: IO[str] | None = None) -> None:
    """Write what Celery says from its signal handlers as one JSON line.

    Celery's worker writes "Warm shutdown" and the like with ``os.write`` from a
    signal handler, outside logging (``celery.apps.worker.safe_say``); this
    replacement keeps that (no lock taken) and only changes the bytes.
    """
    stream = f or sys.__stderr__
    if stream is None:
        return
    entry = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": "WARNING",
        "logger": "celery.apps.worker",
        "message": str(msg).strip(),
    }
    os.write(stream.fileno(), (json.dumps(entry, ensure_ascii=False) + "\n").encode())


def json_root_logging() -> None:
    """Log JSON lines on stderr from now on, warnings included.

    Called as the app is created, before Celery sets up logging: what the worker
    logs or warns before that (a privilege warning...) is JSON too, and Celery,
    finding the root logger configured, keeps this handler.
    """
    root = logging.getLogger()
    if not any(not isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.StreamHandler())
    use_json(root)
    logging.captureWarnings(True)


def configure_cli_logging(log_format: str) -> None:
    """Set up the CLI's logging on stderr: text (the default) or JSON lines."""
    if log_format == "json":
        json_root_logging()
        logging.getLogger().setLevel(logging.INFO)
    else:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
