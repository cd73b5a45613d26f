"""The benchmark floor: the same Celery app and settings, with ``tasks.place_order`` a no-op.

Run as ``celery -A bench.noop_app worker``; it accepts the same JSON payload
and acks it after doing nothing, so its throughput is what Celery itself costs.
The real task module is never imported here (``include=()``), so the name is ours.
"""

from __future__ import annotations

from typing import Any

from tasks.validation import TASK_NAME
from worker.celery_app import create_app
from worker.settings import Settings

app = create_app(Settings.from_env(), include=())


@app.task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]
def place_order(*args: Any, **kwargs: Any) -> None:
    """Accept an order payload and do nothing."""
