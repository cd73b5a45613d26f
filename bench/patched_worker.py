"""Our worker app with diagnostic switches, for measuring one candidate cost at a time.

Run as ``celery -A bench.patched_worker worker`` with ``BENCH_PATCH`` a comma-separated
list of `PATCHES`. Not part of the product: each switch takes one mechanism out, so
an interleaved run shows what that mechanism costs per order.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from celery import Celery

import locking.node
from worker.celery_app import create_app
from worker.settings import Settings


def _no_spin(app: Celery) -> None:
    # Lock socket reads sleep in poll() at once instead of spinning first.
    locking.node.SPIN_S = 0.0


def _no_events(app: Celery) -> None:
    # No task events: the main process publishes nothing per task (Flower sees nothing).
    app.conf.update(
        worker_send_task_events=False, task_send_sent_event=False, task_track_started=False
    )


PATCHES: dict[str, Callable[[Celery], None]] = {"nospin": _no_spin, "noevents": _no_events}

app = create_app(Settings.from_env())
for _name in filter(None, os.environ.get("BENCH_PATCH", "").split(",")):
    PATCHES[_name](app)
