"""Worker lifecycle: refuse unsafe configurations at start, never share state across fork."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery.signals import worker_init, worker_process_init

from tasks import runtime
from worker.settings import Settings
from worker.wiring import build_redlock

logger = logging.getLogger(__name__)


def startup_problems(settings: Settings) -> list[str]:
    """Return what stops a worker from starting: bad settings, unusable lock nodes."""
    problems = settings.worker_problems()
    if problems or not settings.lock_enabled:
        return problems
    redlock = build_redlock(settings)
    try:
        errors = {name: error for name, error in redlock.ping().items() if error is not None}
    finally:
        redlock.close()
    if len(errors) > len(settings.redlock_nodes) - redlock.quorum:
        problems += [f"lock node unusable: {error}" for error in errors.values()]
    else:
        for error in errors.values():
            logger.warning("Lock node unavailable at start-up (quorum still possible): %s", error)
    return problems


@worker_init.connect
def _refuse_unsafe_configuration(sender: Any = None, **_: Any) -> None:
    settings: Settings = sender.app.flashsale_settings
    problems = startup_problems(settings)
    if problems:
        for problem in problems:
            logger.critical("Refusing to start: %s", problem)
        print("flashsale worker refused to start:", *problems, sep="\n  - ", file=sys.stderr)
        raise SystemExit(2)


@worker_process_init.connect
def _fresh_process_state(**_: Any) -> None:
    # The parent's engine pool and lock sockets must not be used by this child.
    runtime.reset()
