"""The flash-sale worker: ``celery -A worker worker`` and ``celery -A worker flower``.

``worker.app`` is built from the environment (see `worker.settings`) on first
access, and `create_app` imports Celery on first use, so importing this package
(or ``worker.demo.redis_server``) neither imports Celery, reads the settings,
connects a signal handler nor connects anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from worker.celery_app import create_app
    from worker.settings import Settings

    app: Celery

__all__ = ["Settings", "app", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from worker.celery_app import create_app

        return create_app
    if name == "Settings":
        from worker.settings import Settings

        return Settings
    if name == "app":
        from worker.celery_app import create_app
        from worker.settings import Settings

        global app
        app = create_app(Settings.from_env())
        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
