"""The worker's broker consumer: it reconnects within a second and never dies of a blip.

Celery's consumer, with two changes:

- **Reconnect at a fixed short interval.** Celery reconnects through kombu's
  ``ensure_connection`` with its defaults (2 s, then 4, 6... up to 30 s): after
  a few cuts in a row, consumption stalled ~12 s after a 1 s blip. Here the
  first attempt is immediate and the next ones every
  ``BROKER_RECONNECT_INTERVAL_S`` (0.5 s by default), however many failed
  before: one connection attempt per interval per worker is cheap for the broker.
- **No mingle, no gossip.** Mingle asks the other workers for their revoked
  tasks at start-up through the broker; a connection lost during that exchange
  surfaces as kombu's ``OperationalError``, which the consumer does not treat as
  a connection error, and the worker exited (``Unrecoverable error:
  OperationalError('Connection closed by server.')``). Gossip keeps a broadcast
  consumer per worker for the same cluster bookkeeping. This app revokes nothing
  and elects nothing, so neither has anything to do here (Flower needs the task
  events and heartbeats, which stay on).
- **A broken connection that fails to close is dropped anyway.** Closing a Redis
  channel gives its unacked messages back, through a new connection; when the
  broker is down, kombu raised ``AttributeError`` from there (its transport was
  already collected), which the consumer does not expect: the worker exited
  (``Unrecoverable error``; seen when the broker was SIGKILLed mid-sale). The
  messages stay in the broker's ``unacked`` hash and come back after the
  visibility timeout.
- **An ack on a connection already collected is a failed ack, not a crash.**
  With late acks the main process acks when the pool reports a task done,
  through a callback the event loop runs soon after (``call_soon_ack``). If the
  broker connection was lost meanwhile, the consumer has collected it: kombu's
  Redis channel rebuilds its client pool from a transport whose ``client`` is
  gone and raises ``AttributeError`` (``'NoneType' object has no attribute
  'hostname'``), not a connection error, so Celery's "Couldn't ack" handling
  misses it and the worker exited (``Unrecoverable error``; chaos scenario 13,
  the broker SIGKILLed three times under load, in 1 of 1 runs). Such an ack is
  now logged and dropped like any failed ack: the message stays in the broker's
  unacked set and comes back after the visibility timeout, and its order,
  already decided, is answered from its row.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer with a fixed reconnect interval and without mingle and gossip."""

    def __init__(self, *args: Any, worker_options: Any = None, **kwargs: Any) -> None:
        options = {**dict(worker_options or {}), "without_mingle": True, "without_gossip": True}
        super().__init__(*args, worker_options=options, **kwargs)

    def ensure_connected(self, conn: Any) -> Any:
        """Connect ``conn`` as Celery does, retrying at once, then every interval."""
        interval_s = self.app.flashsale_settings.broker_reconnect_interval_s
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=0,
            interval_step=interval_s,
            interval_max=interval_s,
        )
        return super().ensure_connected(conn)

    def call_soon_ack(self, p: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Schedule an ack or reject as Celery does; see `survive_collected_connection`."""
        return super().call_soon_ack(survive_collected_connection(p), *args, **kwargs)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Clean up after a lost connection as Celery does; a failing close is logged, not fatal."""
        connection = self.connection
        if connection is not None:
            close = connection.close

            def close_quietly() -> None:
                try:
                    close()
                except Exception as error:  # the connection is being thrown away
                    logger.warning("Broker connection dropped without a clean close: %r", error)

            connection.close = close_quietly
        super().on_connection_error_after_connected(exc)


def survive_collected_connection(ack: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a message's ``ack_log_error``/``reject_log_error`` so a collected connection is logged.

    :param ack: a bound method of a kombu message; other callables pass through.
    """
    message = getattr(ack, "__self__", None)
    if message is None:
        return ack

    @functools.wraps(ack)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return ack(*args, **kwargs)
        except AttributeError as error:
            if not _connection_gone(message):
                raise
            logger.warning(
                "Couldn't ack %r: its broker connection is gone (%r); "
                "the broker delivers it again after the visibility timeout.",
                getattr(message, "delivery_tag", None),
                error,
            )
            return None

    return call


def _connection_gone(message: Any) -> bool:
    """Whether the message's channel no longer has a live broker connection behind it."""
    transport = getattr(getattr(message, "channel", None), "connection", None)
    return transport is None or getattr(transport, "client", None) is None
