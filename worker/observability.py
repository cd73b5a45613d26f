"""What the operator sees of a worker: its /metrics server, lock node probe and log format.

`install` connects the Celery signals once per process. With
``WORKER_METRICS_PORT`` set, the worker's main process (``worker_init``, before
the pool forks) binds the port, empties its multiprocess directory, creates the
`WorkerMetrics` every pool process inherits and starts the lock node probe.
With ``LOG_FORMAT=json`` every handler Celery sets up (worker, beat) formats
JSON lines and the start-up banner, which Celery prints outside logging, is off.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.apps import worker as celery_worker_app
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
)

from locking import NodeError
from worker import metrics
from worker.logformat import json_root_logging, json_say, use_json
from worker.nodeprobe import NodeProbe
from worker.settings import Settings
from worker.wiring import build_redlock

logger = logging.getLogger(__name__)


def install(app: Celery, settings: Settings) -> None:
    """Connect the observability handlers for ``app`` (idempotent per process)."""
    app.flashsale_metrics = None
    json_logs = settings.log_format == "json"

    def json_formatter(logger: logging.Logger | None = None, **_: Any) -> None:
        if json_logs and logger is not None:
            use_json(logger)

    def no_banner(instance: Any = None, **_: Any) -> None:
        # The banner is printed to stdout, not logged: it would break JSON lines.
        if json_logs and instance is not None:
            instance.quiet = True

    if json_logs:
        json_root_logging()
        # Celery writes shutdown notices from signal handlers straight to stdout.
        celery_worker_app.safe_say = json_say
    after_setup_logger.connect(json_formatter, weak=False, dispatch_uid="flashsale-json-log")
    after_setup_task_logger.connect(
        json_formatter, weak=False, dispatch_uid="flashsale-json-task-log"
    )
    celeryd_after_setup.connect(no_banner, weak=False, dispatch_uid="flashsale-json-banner")
    worker_init.connect(_start_metrics, weak=False, dispatch_uid="flashsale-metrics")
    worker_shutdown.connect(_stop_metrics, weak=False, dispatch_uid="flashsale-metrics-stop")
    worker_process_shutdown.connect(
        _pool_process_exit, weak=False, dispatch_uid="flashsale-metrics-exit"
    )


def order_events(app: Celery) -> metrics.WorkerMetrics | None:
    """Return the worker's metrics (the order events sink), None when metrics are off."""
    found: metrics.WorkerMetrics | None = getattr(app, "flashsale_metrics", None)
    return found


def node_error_callback(app: Celery) -> Callable[[NodeError], None] | None:
    """Return the ``Redlock(on_node_error=...)`` counter, None when metrics are off."""
    found = order_events(app)
    return found.node_error if found is not None else None


_running: dict[str, Any] = {}


def _start_metrics(sender: Any = None, **_: Any) -> None:
    app = sender.app
    settings: Settings | None = getattr(app, "flashsale_settings", None)
    if settings is None:
        return  # another Celery app in this process: not ours to instrument
    if not settings.metrics_enabled or settings.worker_problems():
        return
    directory = metrics.multiprocess_dir(settings.worker_metrics_port)
    try:
        # Bind first: if another worker serves this port, its directory stays intact.
        _running["server"] = metrics.serve(settings.worker_metrics_port, directory)
    except OSError as error:
        # Celery logs and ignores a handler's exception: a worker without its
        # metrics would run unseen, so refuse to start instead.
        message = f"cannot serve metrics on WORKER_METRICS_PORT={settings.worker_metrics_port}"
        logger.critical("Refusing to start: %s: %s", message, error)
        print(f"flashsale worker refused to start: {message}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    metrics.enable_multiprocess(directory)
    _running["directory"] = directory
    redlock = build_redlock(settings) if settings.lock_enabled else None
    worker_metrics = metrics.WorkerMetrics(redlock.node_names if redlock else ())
    app.flashsale_metrics = worker_metrics
    if redlock is not None:
        probe = NodeProbe(redlock.ping, worker_metrics.set_node_up)
        probe.start()
        _running["probe"] = probe
    logger.info(
        "Serving metrics on port %d (directory %s)", settings.worker_metrics_port, directory
    )


def _stop_metrics(**_: Any) -> None:
    probe = _running.pop("probe", None)
    if probe is not None:
        probe.stop()
    server = _running.pop("server", None)
    if server is not None:
        server.shutdown()
    # A stopped worker's figures end with it; a killed one's directory is emptied
    # by the next worker on its port, so at most one directory per port remains.
    directory = _running.pop("directory", None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def _pool_process_exit(pid: int | None = None, **_: Any) -> None:
    metrics.process_exited(pid or os.getpid())
