"""Worker lifecycle: refuse unsafe configurations at start, never share state across fork.

`connect` is called by `worker.celery_app.create_app`: importing `worker` connects
nothing. The start-up check acts only for an app that `create_app` built (one that
carries ``flashsale_settings``), so another Celery app in the same process starts
as if this module were not there; the fork handler only forgets flashsale's own
runtime.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from celery import Celery
from celery.signals import worker_init, worker_process_init

from tasks import runtime
from worker.health import lock_health
from worker.settings import Settings

logger = logging.getLogger(__name__)


def startup_problems(settings: Settings) -> list[str]:
    """Return what stops a worker from starting: bad settings, unusable lock nodes."""
    problems = settings.worker_problems()
    if problems or not settings.lock_enabled:
        return problems
    locks = lock_health(settings)
    for warning in locks.warnings:
        logger.warning("Starting with a lock quorum still possible: %s", warning)
    return problems + locks.problems


def connect() -> None:
    """Connect the lifecycle handlers once per process (idempotent)."""
    worker_init.connect(_refuse_unsafe_configuration, dispatch_uid=_UID_REFUSE, weak=False)
    worker_process_init.connect(_fresh_process_state, dispatch_uid=_UID_FRESH, weak=False)


_UID_REFUSE = "flashsale.refuse_unsafe_configuration"
_UID_FRESH = "flashsale.fresh_process_state"


def refuse_to_start(problems: Sequence[str]) -> NoReturn:
    """Log and print why the worker does not start, and exit 2.

    An exception would not do: Celery logs and ignores a signal handler's.
    """
    for problem in problems:
        logger.critical("Refusing to start: %s", problem)
    print("flashsale worker refused to start:", *problems, sep="\n  - ", file=sys.stderr)
    raise SystemExit(2)


def settings_of(app: Celery | None) -> Settings | None:
    """Return the settings of an app built by `create_app`, None for any other app."""
    settings = getattr(app, "flashsale_settings", None)
    return settings if isinstance(settings, Settings) else None


def _refuse_unsafe_configuration(sender: Any = None, **_: Any) -> None:
    settings = settings_of(getattr(sender, "app", None))
    if settings is None:
        return
    problems = startup_problems(settings)
    if problems:
        refuse_to_start(problems)


def _fresh_process_state(**_: Any) -> None:
    # The parent's engine pool and lock sockets must not be used by this child. The
    # signal names no app; this only forgets flashsale's own runtime, which is right
    # in any pool child of a process that built a flashsale app.
    runtime.reset()
