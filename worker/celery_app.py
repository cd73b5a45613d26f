"""The Celery app, built explicitly from `Settings`; every reliability choice is explained."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from tasks import runtime
from tasks.relay import RELAY_QUEUE, RELAY_TASK_NAME
from worker.settings import Settings
from worker.wiring import build_runtime


#: Celery's default queue: the orders' queue, where every producer sends by default.
DEFAULT_QUEUE = "celery"


def create_app(
    settings: Settings,
    *,
    include: tuple[str, ...] = ("tasks.place_order", "tasks.relay_task"),
) -> Celery:
    """Return the Celery app for ``settings``; nothing connects until a worker starts.

    :param include: task modules to register (benchmarks swap in a no-op task).
    """
    app = Celery("flashsale", broker=settings.broker_url, include=list(include))
    app.conf.update(
        # JSON only: a pickle message would be code execution on the worker.
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Order outcomes live in the database; there is no result backend to lose or fill.
        task_ignore_result=True,
        # Ack after the task ran, one message per process: a crash loses nothing and
        # a busy process does not sit on messages another process could run.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # A killed pool process gives its message back; the order's delivery count
        # (orders.attempts, capped by ORDER_MAX_DELIVERIES) stops a poison order.
        task_reject_on_worker_lost=True,
        # A task that raised is done (acked): failures are recorded, not looped.
        task_acks_on_failure_or_timeout=True,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        # Unacked messages return after this long; it must exceed any task run. kombu
        # sweeps for them every 10 s x 10 by default, whatever the timeout: sweep at a
        # quarter of it, so a crashed worker's message is back in ~1.25x the timeout.
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_interval": max(1, int(settings.broker_visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Events on, so Flower sees every task, its arguments and its outcome.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        worker_hijack_root_logger=False,
        # The intake relay (tasks.relay), sent by `celery -A worker beat` to a queue of
        # its own that every worker also consumes: behind a backlog of minutes in the
        # orders' queue it would never run in time. A round that waited longer than
        # one interval is dropped: the next one is coming.
        task_queues=(Queue(DEFAULT_QUEUE), Queue(RELAY_QUEUE)),
        task_default_queue=DEFAULT_QUEUE,
        task_routes={RELAY_TASK_NAME: {"queue": RELAY_QUEUE}},
        beat_schedule={
            "intake-relay": {
                "task": RELAY_TASK_NAME,
                "schedule": settings.intake_relay_interval_s,
                "options": {"expires": settings.intake_relay_interval_s},
            }
        },
    )
    app.flashsale_settings = settings
    runtime.install(lambda: build_runtime(settings))
    return app
