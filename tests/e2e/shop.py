"""A running shop for end-to-end tests: the stack's broker and workers, its database, a client.

`open_shop` seeds the products and starts one real worker (a prefork pool of two
processes); the client sends ``tasks.place_order`` by name, as a web app would.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from sqlalchemy import Engine, update

from tasks.models import Product
from tasks.validation import TASK_NAME
from tests.domain import order_row
from tests.sale import producer, seed_products, wait_until_decided
from tests.waiting import wait_for
from worker.demo.stack import LocalStack


@dataclass
class Shop:
    """The stack under test, its database and a producer client."""

    stack: LocalStack
    engine: Engine
    client: Celery

    def send(self, *payloads: Mapping[str, Any]) -> list[str]:
        """Send each payload as the task's kwargs; return their order ids (as given)."""
        for payload in payloads:
            self.client.send_task(TASK_NAME, kwargs=dict(payload))
        return [str(payload.get("order_id")) for payload in payloads]

    def send_raw(
        self, args: Sequence[object] = (), kwargs: Mapping[str, Any] | None = None
    ) -> None:
        """Send the task with arbitrary positional and keyword arguments."""
        self.client.send_task(TASK_NAME, args=list(args), kwargs=dict(kwargs or {}))

    def place(self, *payloads: Mapping[str, Any]) -> list[str]:
        """Send the payloads and wait until every one of them is decided."""
        ids = self.send(*payloads)
        wait_until_decided(self.engine, ids, timeout_s=60)
        return ids

    def wait_for_attempts(self, order_id: str, attempts: int) -> None:
        """Wait until the order was delivered ``attempts`` times and the broker is drained."""

        def delivered() -> bool:
            row = order_row(self.engine, order_id)
            return row is not None and row.attempts >= attempts

        wait_for(delivered, f"{attempts} deliveries of {order_id}")
        self.wait_drained()

    def wait_drained(self) -> None:
        """Wait until no message is queued, reserved or waiting for a retry: all were acked."""
        wait_for(self.drained, "an empty broker", settle_s=0.3)

    def drained(self) -> bool:
        assert self.stack.broker is not None
        with redis.Redis(port=self.stack.broker.port) as broker:
            # redis-py annotates both counts as its untyped response type.
            return int(broker.llen("celery")) == 0 and int(broker.hlen("unacked")) == 0

    def set_stock(self, sku: str, quantity: int) -> None:
        """Restock a SKU as an operator would (the ledger stays true)."""
        with self.engine.begin() as connection:
            connection.execute(
                update(Product)
                .where(Product.sku == sku)
                .values(
                    stock=quantity,
                    initial_stock=Product.initial_stock + quantity - Product.stock,
                )
            )

    def worker_log(self) -> str:
        return "".join(worker.log() for worker in self.stack.workers)


@contextmanager
def open_shop(
    stack: LocalStack,
    engine: Engine,
    stock: Mapping[str, int],
    *,
    worker_env: Mapping[str, str] | None = None,
) -> Iterator[Shop]:
    """Seed ``stock``, start one worker of two processes, and yield the shop."""
    seed_products(engine, stock)
    stack.start_worker(concurrency=2, extra_env=worker_env)
    assert stack.broker is not None
    with producer(stack.broker.url) as client:
        yield Shop(stack=stack, engine=engine, client=client)
