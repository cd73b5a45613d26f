"""The Celery app, built explicitly from `Settings`; every reliability choice is explained."""

from __future__ import annotations

from celery import Celery

from tasks import runtime
from tasks.events import NULL_EVENTS
from tasks.relay import RELAY_QUEUE, RELAY_TASK_NAME
from worker import observability, signals
from worker.broker import broker_conf, order_queues
from worker.settings import Settings
from worker.wiring import build_runtime


def create_app(
    settings: Settings,
    *,
    include: tuple[str, ...] = ("tasks.celery_task", "tasks.relay_task"),
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
        # Never give up on the broker, at start-up or later; worker.consumer sets the
        # reconnect interval and leaves out mingle and gossip (see there why).
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        worker_consumer="worker.consumer:Consumer",
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Events on, so Flower sees every task, its arguments and its outcome.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        worker_hijack_root_logger=False,
        # Redis: visibility timeout; RabbitMQ: publisher confirms, quorum queues.
        **broker_conf(settings),
        # The intake relay (tasks.relay), sent by `celery -A worker beat` to a queue of
        # its own that every worker also consumes: in the orders' queue a round waits
        # behind the whole backlog and, sent with a one-interval expiry, is dropped
        # unrun (a 20,000-order sale whose oldest order waited 134 s saw 0 relay
        # publications that way). A round that waited longer than one interval is
        # dropped.
        task_queues=order_queues(settings),
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
    signals.connect()
    observability.install(app, settings)
    # The metrics exist once the worker's main process started them (before the
    # fork); each process builds its runtime later, on first use.
    runtime.install(
        lambda: build_runtime(
            settings,
            events=observability.order_events(app) or NULL_EVENTS,
            on_node_error=observability.node_error_callback(app),
        )
    )
    return app
