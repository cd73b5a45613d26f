"""`tasks.intake`: the order stored in the web app's transaction, published after the commit.

On a real broker (the session's redis-server, a queue of the test's own), on
PostgreSQL and on SQLite.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from tasks.errors import InvalidOrder, OrderConflict
from tasks.intake import store_accepted
from tasks.models import ORDER_ITEMS, ORDERS, OrderStatus
from tasks.producer import get_order, submit_order
from tasks.store import OrderStore
from tasks.validation import TASK_NAME
from tests.domain import cart, order_count, request
from tests.sale import producer, seed_products
from tests.tasks.conftest import MakeStore
from tests.tasks.test_producer import queued
from worker.demo.redis_server import RedisServer, free_port

ITEMS = [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}]
#: A submit whose publish fails must not hold the web request for long.
BROKER_DOWN_BOUND_S = 3.0


@pytest.fixture
def queue() -> str:
    return f"intake-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app(broker: RedisServer, queue: str) -> Iterator[Celery]:
    with producer(broker.url) as client:
        client.conf.task_default_queue = queue
        yield client


def row(engine: Engine, order_id: str) -> dict[str, object]:
    with engine.connect() as connection:
        found = connection.execute(
            select(ORDERS).where(ORDERS.c.id == uuid.UUID(order_id))
        ).one_or_none()
    return {} if found is None else dict(found._mapping)


def test_commit_publishes_once_after_the_commit(
    app: Celery, broker: RedisServer, queue: str, sessions: sessionmaker[Session], engine: Engine
) -> None:
    with sessions.begin() as session:
        order_id = submit_order(app, customer_id="c1", items=ITEMS, session=session)
        assert queued(broker, queue) == [], "published before the commit"
    assert queued(broker, queue) == [
        (TASK_NAME, {"order_id": order_id, "customer_id": "c1", "items": ITEMS})
    ]
    stored = row(engine, order_id)
    assert (stored["status"], stored["attempts"], stored["republications"]) == (
        OrderStatus.ACCEPTED,
        0,
        0,
    )
    assert stored["published_at"] is not None and stored["delivered_at"] is None
    assert cart(engine, order_id) == {"A": 2, "B": 1}
    with sessions() as session:
        view = get_order(session, order_id)
    assert view is not None and view.status is OrderStatus.ACCEPTED


def test_rollback_stores_and_publishes_nothing(
    app: Celery, broker: RedisServer, queue: str, sessions: sessionmaker[Session], engine: Engine
) -> None:
    with pytest.raises(RuntimeError), sessions.begin() as session:
        submit_order(app, customer_id="c1", items=ITEMS, session=session)
        raise RuntimeError("the web app's transaction fails")
    # The same session object, used again and committed: the rolled-back order stays gone.
    with sessions.begin() as session:
        pass
    assert queued(broker, queue) == []
    assert order_count(engine) == 0


def test_several_orders_in_one_transaction_are_published_after_it(
    app: Celery, broker: RedisServer, queue: str, sessions: sessionmaker[Session]
) -> None:
    session = sessions()
    with session.begin():
        ids = [submit_order(app, customer_id="c1", items=ITEMS, session=session) for _ in range(3)]
    with session.begin():
        pass  # a later transaction publishes nothing again
    session.close()
    assert sorted(kwargs["order_id"] for _, kwargs in queued(broker, queue)) == sorted(ids)


def test_the_same_order_twice_is_one_row_and_one_message(
    app: Celery, broker: RedisServer, queue: str, sessions: sessionmaker[Session], engine: Engine
) -> None:
    order_id = str(uuid.uuid4())
    for _ in range(2):
        with sessions.begin() as session:
            got = submit_order(
                app, customer_id="c1", items=ITEMS, order_id=order_id, session=session
            )
        assert got == order_id
    assert order_count(engine) == 1
    assert len(queued(broker, queue)) == 1


def test_another_payload_under_a_known_id_is_a_conflict(
    app: Celery, broker: RedisServer, queue: str, sessions: sessionmaker[Session], engine: Engine
) -> None:
    order_id = str(uuid.uuid4())
    with sessions.begin() as session:
        submit_order(app, customer_id="c1", items=ITEMS, order_id=order_id, session=session)
    with pytest.raises(OrderConflict), sessions.begin() as session:
        submit_order(app, customer_id="c2", items=ITEMS, order_id=order_id, session=session)
    assert row(engine, order_id)["customer_id"] == "c1"
    assert cart(engine, order_id) == {"A": 2, "B": 1}
    assert len(queued(broker, queue)) == 1


def test_a_broker_outage_at_submit_stores_the_order_for_the_relay(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    with producer(f"redis://127.0.0.1:{free_port()}/0") as down:
        started_s = time.monotonic()
        with sessions.begin() as session:
            order_id = submit_order(down, customer_id="c1", items=ITEMS, session=session)
        took_s = time.monotonic() - started_s
    stored = row(engine, order_id)
    assert stored["status"] == OrderStatus.ACCEPTED
    assert stored["published_at"] is None, "the relay must see it as never published"
    assert took_s < BROKER_DOWN_BOUND_S


def test_an_invalid_order_is_refused_before_anything_is_stored(
    app: Celery, broker: RedisServer, queue: str, sessions: sessionmaker[Session], engine: Engine
) -> None:
    with pytest.raises(InvalidOrder) as caught, sessions.begin() as session:
        submit_order(app, customer_id="c1", items=[], session=session)
    assert caught.value.reason == "empty_cart"
    assert order_count(engine) == 0 and queued(broker, queue) == []


@pytest.mark.parametrize("text", ["not-a-uuid", "", "1234"])
def test_get_order_of_a_string_that_is_no_uuid_is_a_clear_error(
    sessions: sessionmaker[Session], text: str
) -> None:
    with sessions() as session, pytest.raises(InvalidOrder) as caught:
        get_order(session, text)
    assert caught.value.reason == "invalid_order_id"


def test_a_worker_adopts_an_accepted_order_without_a_second_row(
    sessions: sessionmaker[Session], engine: Engine, make_store: MakeStore
) -> None:
    order = request({"A": 2})
    with sessions.begin() as session:
        store_accepted(session, order)
    state = make_store().record(order).state
    assert (state.status, state.attempts) == (OrderStatus.PENDING, 1)
    assert order_count(engine) == 1
    with engine.connect() as connection:
        lines = connection.execute(
            select(ORDER_ITEMS.c.sku, ORDER_ITEMS.c.quantity).where(
                ORDER_ITEMS.c.order_id == order.order_id
            )
        ).all()
    assert [tuple(line) for line in lines] == [("A", 2)]
    assert row(engine, str(order.order_id))["delivered_at"] is not None


def test_a_worker_places_an_accepted_order_in_one_step(
    sessions: sessionmaker[Session], engine: Engine, make_store: MakeStore
) -> None:
    seed_products(engine, {"A": 5})
    order = request({"A": 2})
    with sessions.begin() as session:
        store_accepted(session, order)
    settled = make_store().settle(
        order, record=True, fence=None, lease_token=None, wait_ms=None, budget_ms=None
    )
    assert (settled.state.status, settled.state.attempts) == (OrderStatus.CONFIRMED, 1)
    assert [decision.order_id for decision in settled.decisions] == [order.order_id]


def test_a_conflicting_delivery_leaves_the_accepted_order_alone(
    sessions: sessionmaker[Session], engine: Engine, make_store: MakeStore
) -> None:
    order = request({"A": 2})
    with sessions.begin() as session:
        store_accepted(session, order)
    other = request({"A": 3}, order_id=str(order.order_id))
    store: OrderStore = make_store()
    with pytest.raises(OrderConflict):
        store.record(other)
    stored = row(engine, str(order.order_id))
    assert (stored["status"], stored["attempts"]) == (OrderStatus.ACCEPTED, 0)


def test_failing_an_accepted_order_decides_it(
    sessions: sessionmaker[Session], engine: Engine, make_store: MakeStore
) -> None:
    order = request({"A": 1})
    with sessions.begin() as session:
        store_accepted(session, order)
    step = make_store().end(order, OrderStatus.FAILED, "lock_unavailable")
    assert (step.state.status, step.state.reason) == (OrderStatus.FAILED, "lock_unavailable")
    assert len(step.decisions) == 1
