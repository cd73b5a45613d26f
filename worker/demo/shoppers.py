"""Simulated shoppers: random carts, submitted concurrently through the producer API.

Each thread plays a web app's request handlers: it calls
``tasks.producer.submit_order`` with a shared Celery client, as a web process
with several threads would, and nothing else.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from tasks.errors import OrderError
from tasks.producer import submit_order

logger = logging.getLogger(__name__)


def web_client(broker_url: str, *, send_sent_events: bool = False) -> Celery:
    """Return a bare Celery client, as a web app in another codebase would have.

    :param send_sent_events: publish ``task-sent`` events (for Flower).
    """
    app = Celery("flashsale-demo-web", broker=broker_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=send_sent_events,
        broker_connection_retry_on_startup=True,
    )
    return app


def make_carts(
    count: int,
    skus: Sequence[str],
    *,
    multi_line: float,
    max_quantity: int,
    rng: random.Random,
) -> list[list[dict[str, Any]]]:
    """Return ``count`` carts: one line each, or 2-3 distinct SKUs for a ``multi_line`` share.

    :param multi_line: fraction (0..1) of carts with several lines (needs 2+ SKUs).
    :param max_quantity: units per line, drawn from 1..max_quantity.
    """
    carts = []
    for _ in range(count):
        lines = 1
        if len(skus) > 1 and rng.random() < multi_line:
            lines = rng.randint(2, min(3, len(skus)))
        carts.append(
            [
                {"sku": sku, "quantity": rng.randint(1, max_quantity)}
                for sku in rng.sample(list(skus), lines)
            ]
        )
    return carts


@dataclass
class Shoppers:
    """Submit carts from several threads; read the outcome when `join` returns.

    :param app: the Celery client shared by the threads.
    :param carts: what to submit, split round-robin between the threads.
    :param customer_prefix: prefix of every customer id (the sale's scope).
    :param threads: number of producer threads.
    """

    app: Celery
    carts: list[list[dict[str, Any]]]
    customer_prefix: str
    threads: int = 4
    order_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        """Start the producer threads (they stop by themselves when their share is sent)."""
        self.started_s = time.monotonic()
        for index in range(self.threads):
            thread = threading.Thread(
                target=self._produce, args=(index,), name=f"shopper-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    @property
    def done(self) -> bool:
        """True once every thread finished."""
        return all(not thread.is_alive() for thread in self._threads)

    def stop(self, *, timeout_s: float = 5.0) -> None:
        """Ask the threads to stop and wait for them.

        :param timeout_s: bound on the wait in seconds (the threads are daemons).
        """
        self._stop.set()
        self.join(timeout_s=timeout_s)

    def join(self, *, timeout_s: float | None = None) -> None:
        """Wait for every thread to finish its share."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)

    def _produce(self, index: int) -> None:
        for number in range(index, len(self.carts), self.threads):
            if self._stop.is_set():
                return
            customer = f"{self.customer_prefix}{number % 997}"
            try:
                order_id = submit_order(self.app, customer_id=customer, items=self.carts[number])
            except OrderError as error:
                logger.warning("Order not submitted: %s", error)
                with self._lock:
                    self.errors.append(str(error))
                continue
            with self._lock:
                self.order_ids.append(order_id)
