"""The worker's task request: an ack that finds the broker connection already dropped is not fatal.

With late acks the main process acks a message when the pool process reports
the task done. If the broker connection was lost meanwhile, Celery's consumer
has already collected it: kombu's Redis channel then rebuilds its client pool
from a transport whose ``client`` is gone, and the ack raises ``AttributeError``
(``'NoneType' object has no attribute 'hostname'``) instead of a connection
error. Celery logs connection errors from an ack ("Couldn't ack") and carries
on; an ``AttributeError`` escapes into the event loop and the worker exits (seen
once in a chaos run with the broker's connections cut under load). Such an ack
is now logged and dropped like any failed ack: the message stays in the
broker's unacked set, comes back after the visibility timeout, and its order,
already decided, is answered from its row.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task as CeleryTask
from celery.worker.request import Request as CeleryRequest

logger = logging.getLogger(__name__)


def _connection_gone(message: Any) -> bool:
    """Whether the message's channel no longer has a live broker connection behind it."""
    channel = getattr(message, "channel", None)
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


class Request(CeleryRequest):  # type: ignore[misc]
    """Celery's request; an ack or reject on a collected connection is logged, not raised."""

    def acknowledge(self) -> None:
        """Ack the message as Celery does; survive a connection kombu already collected."""
        try:
            super().acknowledge()
        except AttributeError as error:
            if not _connection_gone(self._message):
                raise
            logger.warning(
                "Couldn't ack task %r: its broker connection is gone (%r); "
                "the broker delivers it again after the visibility timeout.",
                self.id,
                error,
            )

    def reject(self, requeue: bool = False) -> None:
        """Reject the message as Celery does; survive a connection kombu already collected."""
        try:
            super().reject(requeue=requeue)
        except AttributeError as error:
            if not _connection_gone(self._message):
                raise
            logger.warning(
                "Couldn't reject task %r: its broker connection is gone (%r); "
                "the broker delivers it again after the visibility timeout.",
                self.id,
                error,
            )


class Task(CeleryTask):  # type: ignore[misc]
    """The app's task base: its requests are `Request`."""

    Request = "worker.request:Request"
