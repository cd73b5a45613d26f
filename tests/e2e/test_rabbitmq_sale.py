"""RabbitMQ as the broker: a flash sale through real workers, classic and quorum queues.

Each test runs on a vhost of its own (see tests/rabbitmq.py). The sale is small
and checked with the same invariants as the Redis sales (`check_invariants`):
no stock below zero, the ledger balances, every order decided exactly once. The
orders go in through ``submit_order`` on the project's app, so with publisher
confirms each call returns only once RabbitMQ has taken the message.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import Engine

from tasks.producer import submit_order
from tests.domain import payload, stock
from tests.rabbitmq import queue_backlog, queue_type
from tests.sale import check_invariants, random_carts, seed_products, wait_until_decided
from tests.waiting import wait_for
from worker import create_app
from worker.demo.stack import LocalStack
from worker.settings import Settings

STOCK = {"HOT": 40, "A": 60, "B": 60}
#: Sends an order to a retry with a countdown now and then (contended locks).
CONTENDED = {"REDLOCK_HANDOFF_MS": "0", "REDLOCK_WAIT_ATTEMPTS": "1"}


def sell(stack: LocalStack, engine: Engine, *, orders: int, env: dict[str, str]) -> list[str]:
    """Seed `STOCK`, start 2 workers x 2, submit ``orders`` carts + a sell-out tail."""
    seed_products(engine, STOCK)
    for _ in range(2):
        stack.start_worker(concurrency=2, extra_env=env, wait=False)
    for worker in stack.workers:
        stack.wait_ready(worker)
    carts = random_carts(orders, list(STOCK), max_lines=3, max_quantity=2, seed=5)
    carts += [payload({sku: 1}) for sku, units in STOCK.items() for _ in range(units)]
    random.Random(5).shuffle(carts)
    settings = Settings.from_env({"CELERY_BROKER_URL": stack.env["CELERY_BROKER_URL"], **env})
    app = create_app(settings)
    try:
        ids = [
            submit_order(
                app,
                order_id=str(cart["order_id"]),
                customer_id=str(cart["customer_id"]),
                items=cart["items"],
            )
            for cart in carts
        ]
    finally:
        app.close()
    wait_until_decided(engine, ids, timeout_s=120)
    return ids


def vhost_of(stack: LocalStack) -> str:
    return stack.env["CELERY_BROKER_URL"].rsplit("/", 1)[1]


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
def test_a_sale_on_rabbitmq_sells_the_stock_exactly_once(
    amqp_stack: LocalStack, engine: Engine, quorum: bool
) -> None:
    env = {**CONTENDED, "BROKER_QUORUM_QUEUES": "true" if quorum else "false"}
    ids = sell(amqp_stack, engine, orders=300, env=env)
    report = check_invariants(engine, ids)
    # More one-unit orders than units on every SKU: the sale sells out completely.
    assert report.units_sold == STOCK
    assert stock(engine) == dict.fromkeys(STOCK, 0)
    assert set(report.by_status) <= {"confirmed", "rejected"}
    vhost = vhost_of(amqp_stack)
    assert queue_type(vhost) == ("quorum" if quorum else "classic")
    wait_for(lambda: queue_backlog(vhost) == (0, 0), "an empty queue", timeout_s=30)
    alive = [worker.process.poll() is None for worker in amqp_stack.workers]
    assert all(alive)
