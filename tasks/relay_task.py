"""The periodic task ``tasks.relay_orders``: one relay round, scheduled by Celery beat.

Beat sends it every ``INTAKE_RELAY_INTERVAL_S`` with that interval as its expiry:
during a backlog a worker drops the rounds that queued behind it instead of
running them in a burst (a backlog is no loss: the relay has nothing to do then).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task, shared_task
from kombu.exceptions import ChannelError, OperationalError

from tasks import runtime
from tasks.producer import PUBLISH_RETRY_POLICY
from tasks.relay import RELAY_TASK_NAME, OrderRelay
from tasks.validation import TASK_NAME

logger = logging.getLogger(__name__)


@shared_task(name=RELAY_TASK_NAME, bind=True, ignore_result=True)
def relay_orders(self: Task) -> dict[str, Any]:
    """Run one relay round with this worker's database and broker; return its figures."""
    app: Celery = self.app
    rt = runtime.current()
    with app.producer_or_acquire() as producer:

        def publish(kwargs: Mapping[str, Any]) -> None:
            app.send_task(
                TASK_NAME,
                kwargs=dict(kwargs),
                producer=producer,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )

        relay = OrderRelay(
            engine=rt.engine,
            publish=publish,
            queue_length=lambda: queue_length(app),
            republish_after_s=rt.republish_after_s,
        )
        done = relay.run_once()
    if done.published or done.republished or done.failed:
        logger.warning(
            "Relay round: %d published, %d republished (%d candidates, queue %s), %d failed.",
            done.published,
            done.republished,
            done.candidates,
            done.queued,
            done.failed,
        )
    return {
        "published": done.published,
        "republished": done.republished,
        "candidates": done.candidates,
        "queued": done.queued,
        "failed": done.failed,
    }


def queue_length(app: Celery) -> int:
    """Messages waiting in the orders' queue (0 when the broker does not know the queue)."""
    with app.connection_for_write() as connection:
        try:
            _, count, _ = connection.default_channel.queue_declare(
                queue=app.conf.task_default_queue, passive=True
            )
        except (ChannelError, OperationalError) as error:
            # Redis forgets an empty list; RabbitMQ says NOT_FOUND: nothing queued either way.
            logger.debug("Queue %r not found: %s", app.conf.task_default_queue, error)
            return 0
    return int(count)
