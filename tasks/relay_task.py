"""The periodic task ``tasks.relay_orders``: one relay round, scheduled by Celery beat.

Beat sends it every ``INTAKE_RELAY_INTERVAL_S`` to the relay's own queue (which
every worker consumes besides the orders' queue, so a backlog of orders does not
delay it), with that interval as its expiry: when every worker process stays busy
longer than that, the rounds that waited are dropped instead of run in a burst.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task, shared_task
from kombu.exceptions import ChannelError, OperationalError

from tasks import runtime
from tasks.producer import BROKER_PUBLISH_RETRIES
from tasks.relay import RELAY_TASK_NAME, OrderRelay
from tasks.validation import TASK_NAME

logger = logging.getLogger(__name__)


# Acked before it runs: a round's own message, unacked on Redis while it ran, would
# count as a held order message and hide one lost order from every round (measured:
# the last of 300 lost orders was never republished). A lost round costs nothing.
@shared_task(name=RELAY_TASK_NAME, bind=True, ignore_result=True, acks_late=False)
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
                retry_policy=BROKER_PUBLISH_RETRIES,
            )

        relay = OrderRelay(
            engine=rt.engine,
            publish=publish,
            queue_length=lambda: queue_length(app),
            republish_after_s=rt.republish_after_s,
        )
        done = relay.run_once()
    rt.events.orders_relayed(done.published, done.republished)
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
    """Messages the broker holds for the workers: queued, plus (Redis) delivered and unacked.

    A message a worker has taken but not started is not in the queue; on Redis it
    is in the ``unacked`` hash until acknowledged (and is lost with it if the broker
    loses its data). Counting it keeps the relay from republishing it. RabbitMQ
    keeps such a message and redelivers it if the worker goes away.
    """
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        try:
            _, count, _ = channel.queue_declare(queue=app.conf.task_default_queue, passive=True)
        except (ChannelError, OperationalError) as error:
            # Redis forgets an empty list; RabbitMQ says NOT_FOUND: nothing queued either way.
            logger.debug("Queue %r not found: %s", app.conf.task_default_queue, error)
            count = 0
        unacked_key = getattr(channel, "unacked_key", None)
        if unacked_key is not None:
            count += int(channel.client.hlen(unacked_key))
    return int(count)
