"""Worker lifecycle: refuse unsafe configurations at start, never share state across fork.

`connect` is called by `worker.celery_app.create_app`; the handlers act only for an
app that `create_app` built (one that carries ``flashsale_settings``), so another
Celery app in the same process starts as if this module were not there.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import Celery, current_app
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
    # worker_process_init has no sender; the pool child has just made its app current.
    if _settings_of(current_app._get_current_object()) is None:
        return
    # The parent's engine pool and lock sockets must not be used by this child.
    runtime.reset()
