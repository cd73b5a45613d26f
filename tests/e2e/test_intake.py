"""The intake record end to end: real workers, Celery beat running the relay, PostgreSQL.

Orders are stored by ``submit_order(..., session=...)`` in the test's own
transactions, as a web app would; the relay (beat every second here) publishes
what the broker did not take.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import Engine, func, select

from tasks.db import session_factory
from tasks.models import ORDERS, OrderStatus
from tasks.producer import submit_order
from tasks.relay_task import queue_length
from tests.rabbitmq import queue_type
from tests.sale import check_invariants, producer, random_carts, seed_products, wait_until_decided
from worker import create_app
from worker.demo.stack import LocalStack
from worker.settings import Settings

#: A relay round every second; an order is a candidate 3 s after its publication.
RELAY_ENV = {"INTAKE_RELAY_INTERVAL_S": "1", "INTAKE_REPUBLISH_AFTER_S": "3"}
STOCK = {"A": 30, "B": 30}


@pytest.fixture
def web(stack: LocalStack) -> Iterator[Celery]:
    """The web app's Celery client (it never runs tasks)."""
    with producer(stack.env["CELERY_BROKER_URL"]) as client:
        yield client


def submit_all(engine: Engine, app: Celery, carts: list[dict[str, object]]) -> list[str]:
    """Submit every cart through the intake record, one web transaction each."""
    sessions = session_factory(engine)
    ids = []
    for cart in carts:
        with sessions.begin() as session:
            ids.append(
                submit_order(
                    app,
                    customer_id=str(cart["customer_id"]),
                    items=cart["items"],  # type: ignore[arg-type]
                    order_id=str(cart["order_id"]),
                    session=session,
                )
            )
    return ids


def republications(engine: Engine, ids: list[str]) -> int:
    with engine.connect() as connection:
        total = connection.scalar(
            select(func.sum(ORDERS.c.republications)).where(
                ORDERS.c.id.in_([uuid.UUID(order_id) for order_id in ids])
            )
        )
    return int(total or 0)


def test_orders_of_the_intake_record_are_decided_once_each(
    stack: LocalStack, engine: Engine, web: Celery
) -> None:
    seed_products(engine, STOCK)
    stack.start_worker(concurrency=2, extra_env=RELAY_ENV)
    stack.start_beat(extra_env=RELAY_ENV)
    ids = submit_all(engine, web, random_carts(80, list(STOCK), max_lines=2, seed=3))
    wait_until_decided(engine, ids, timeout_s=60)
    check_invariants(engine, ids)
    assert republications(engine, ids) == 0, "a decided order was published again"


def test_orders_taken_while_the_broker_is_down_are_relayed_when_it_is_back(
    stack: LocalStack, engine: Engine, web: Celery
) -> None:
    assert stack.broker is not None
    seed_products(engine, STOCK)
    stack.start_worker(concurrency=2, extra_env=RELAY_ENV)
    stack.start_beat(extra_env=RELAY_ENV)
    stack.broker.stop()
    ids = submit_all(engine, web, random_carts(20, list(STOCK), max_lines=2, seed=5))
    with engine.connect() as connection:
        stored = connection.execute(
            select(ORDERS.c.status, ORDERS.c.published_at).where(
                ORDERS.c.id.in_([uuid.UUID(order_id) for order_id in ids])
            )
        ).all()
    assert [(status, published) for status, published in stored] == [
        (OrderStatus.ACCEPTED, None)
    ] * len(ids), "every submission is stored, none published"
    stack.broker.start()
    wait_until_decided(engine, ids, timeout_s=60)
    check_invariants(engine, ids)
    assert republications(engine, ids) == len(ids), "each order relayed exactly once"


@pytest.mark.parametrize("quorum", [False, True], ids=["classic", "quorum"])
def test_the_intake_record_on_rabbitmq(
    amqp_stack: LocalStack, engine: Engine, quorum: bool
) -> None:
    env = {**RELAY_ENV, "BROKER_QUORUM_QUEUES": "true" if quorum else "false"}
    seed_products(engine, STOCK)
    amqp_stack.start_worker(concurrency=2, extra_env=env)
    amqp_stack.start_beat(extra_env=env)
    app = create_app(Settings.from_env({**amqp_stack.env, **env}))
    try:
        ids = submit_all(engine, app, random_carts(40, list(STOCK), max_lines=2, seed=7))
        wait_until_decided(engine, ids, timeout_s=60)
        assert queue_length(app) == 0
    finally:
        app.close()
    check_invariants(engine, ids)
    assert republications(engine, ids) == 0
    vhost = amqp_stack.env["CELERY_BROKER_URL"].rsplit("/", 1)[1]
    assert queue_type(vhost) == ("quorum" if quorum else "classic")


def test_the_relay_counts_what_the_redis_broker_holds(stack: LocalStack) -> None:
    app = create_app(Settings.from_env(stack.env))
    try:
        assert queue_length(app) == 0  # Redis forgets an empty queue: nothing held
        for number in range(3):
            app.send_task("tasks.place_order", kwargs={"order_id": str(number)})
        assert queue_length(app) == 3
    finally:
        app.close()
