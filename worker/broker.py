"""What each broker kind needs from the Celery app: Redis or RabbitMQ (AMQP).

Both keep a queued order through a broker restart (Redis with AOF, RabbitMQ with
a durable queue and persistent messages) and give an unacknowledged order back
(Redis after the visibility timeout, RabbitMQ as soon as the consumer's
connection closes). RabbitMQ also confirms every publish: ``submit_order``
returns only once the broker has taken the message.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu import Queue  # type: ignore[attr-defined]

from tasks.relay import RELAY_QUEUE
from worker.settings import Settings

#: The queue every order goes to (Celery's default name).
QUEUE = "celery"


def broker_conf(settings: Settings) -> dict[str, Any]:
    """Return the Celery settings specific to ``settings.broker_kind``."""
    if settings.broker_kind == "amqp":
        return _amqp_conf(settings)
    return {
        # Unacked messages return after this long; it must exceed any task run. kombu
        # sweeps for them every 10 s x 10 by default, whatever the timeout: sweep at a
        # quarter of it, so a crashed worker's message is back in ~1.25x the timeout.
        "broker_transport_options": {
            "visibility_timeout": settings.broker_visibility_timeout_s,
            "unacked_restore_interval": max(1, int(settings.broker_visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
    }


def order_queues(settings: Settings) -> tuple[Queue, ...]:
    """The queues every worker consumes: the orders' (`QUEUE`) and the relay's rounds."""
    quorum = settings.broker_kind == "amqp" and settings.broker_quorum_queues
    arguments = {"x-queue-type": "quorum"} if quorum else None
    return tuple(
        Queue(name, queue_arguments=arguments)  # type: ignore[no-untyped-call]
        for name in (QUEUE, RELAY_QUEUE)
    )


def _amqp_conf(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        # basic.publish waits for the broker's confirm: a publish that returned is
        # on the broker (on disk, for a persistent message on a durable queue).
        "broker_transport_options": {"confirm_publish": True},
        # Persistent messages (delivery mode 2) on a durable queue (kombu's default).
        "task_default_delivery_mode": "persistent",
        # AMQP heartbeats find a dead connection (a half-open TCP link) in ~2x this.
        "broker_heartbeat": 10,
    }
    if settings.broker_quorum_queues:
        conf.update(
            # A replicated, durable queue (Raft). Quorum queues ignore global QoS:
            # Celery detects the queue type (worker_detect_quorum_queues, on by
            # default) and sets the prefetch per consumer instead.
            task_default_queue_type="quorum",
            worker_detect_quorum_queues=True,
        )
        # The exchange stays direct, so Celery's native delayed delivery (topic
        # exchanges only) is not used: it rounds a countdown down to whole seconds
        # and raises for one below 1 s, and our retry countdowns are jittered from
        # 0 s (measured: "countdown must be a positive number", the task rejected
        # and its order left pending). A retry is held by the worker instead, at
        # most ORDER_RETRY_MAX_S, and RabbitMQ redelivers it if the worker dies.
        logging.getLogger("celery.app.base").addFilter(_drop_direct_exchange_warning)
    return conf


def _drop_direct_exchange_warning(record: logging.LogRecord) -> bool:
    """Drop Celery's per-retry warning that a direct exchange gets no native delay."""
    return "Direct exchanges are not supported with native delayed delivery" not in str(record.msg)
