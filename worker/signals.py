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
from typing import Any

from celery import Celery
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


def connect() -> None:
    """Connect the lifecycle handlers once per process (idempotent)."""
    worker_init.connect(_refuse_unsafe_configuration, dispatch_uid=_UID_REFUSE, weak=False)
    worker_process_init.connect(_fresh_process_state, dispatch_uid=_UID_FRESH, weak=False)


_UID_REFUSE = "flashsale.refuse_unsafe_configuration"
_UID_FRESH = "flashsale.fresh_process_state"


def _settings_of(app: Celery | None) -> Settings | None:
    """Return the settings of an app built by `create_app`, None for any other app."""
    settings = getattr(app, "flashsale_settings", None)
    return settings if isinstance(settings, Settings) else None


def _refuse_unsafe_configuration(sender: Any = None, **_: Any) -> None:
    settings = _settings_of(getattr(sender, "app", None))
    if settings is None:
        return
    problems = startup_problems(settings)
    if problems:
        for problem in problems:
            logger.critical("Refusing to start: %s", problem)
        print("flashsale worker refused to start:", *problems, sep="\n  - ", file=sys.stderr)
        raise SystemExit(2)


def _fresh_process_state(**_: Any) -> None:
    # The parent's engine pool and lock sockets must not be used by this child. The
    # signal names no app; this only forgets flashsale's own runtime, which is right
    # in any pool child of a process that built a flashsale app.
    runtime.reset()
