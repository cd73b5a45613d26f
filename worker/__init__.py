"""The flash-sale worker: ``celery -A worker worker`` and ``celery -A worker flower``.

``worker.app`` is built from the environment (see `worker.settings`) on first
access, so importing this package (the CLI does) neither reads the settings nor
connects anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker import signals as _signals  # noqa: F401  (connects the lifecycle handlers)
from worker.celery_app import create_app
from worker.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

    app: Celery

__all__ = ["Settings", "app", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        global app
        app = create_app(Settings.from_env())
        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
