"""`tasks.relay`: what one round publishes, on PostgreSQL and on SQLite.

The broker is replaced by a list (what was published) and a number (its queue
length): the relay's decisions are the claim here; the end-to-end and chaos
tests run it on a real broker through Celery beat.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from tasks.db import create_db_engine, session_factory
from tasks.intake import store_accepted
from tasks.models import ORDERS, OrderStatus
from tasks.relay import OrderRelay
from tests.domain import request
from tests.tasks.conftest import MakeStore

LATER = timedelta(hours=1)


class Broker:
    """What the relay published, and the queue length it is told."""

    def __init__(self, queued: int = 0, fail_after: int | None = None) -> None:
        self.sent: list[str] = []
        self.queued = queued
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def publish(self, kwargs: Mapping[str, Any]) -> None:
        with self.lock:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise ConnectionError("broker down")
            self.sent.append(str(kwargs["order_id"]))


def relay(
    engine: Engine, broker: Broker, *, ahead: timedelta = LATER, **options: Any
) -> OrderRelay:
    """A relay whose clock runs ``ahead`` of the database's (orders look that old)."""
    return OrderRelay(
        engine=engine,
        publish=broker.publish,
        queue_length=lambda: broker.queued,
        clock=lambda: datetime.now(UTC) + ahead,
        **options,
    )


def accept(sessions: sessionmaker[Session], count: int = 1) -> list[str]:
    ids = []
    for _ in range(count):
        order = request({"A": 1})
        with sessions.begin() as session:
            store_accepted(session, order)
        ids.append(str(order.order_id))
    return ids


def columns(engine: Engine, order_id: str) -> tuple[Any, ...]:
    with engine.connect() as connection:
        return tuple(
            connection.execute(
                select(ORDERS.c.status, ORDERS.c.published_at, ORDERS.c.republications).where(
                    ORDERS.c.id == uuid.UUID(order_id)
                )
            ).one()
        )


def unpublish(engine: Engine, order_id: str) -> None:
    """As the intake does when its publish after commit failed."""
    with engine.begin() as connection:
        connection.execute(
            update(ORDERS).where(ORDERS.c.id == uuid.UUID(order_id)).values(published_at=None)
        )


def test_a_never_published_order_is_published_at_the_next_round(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    _fresh, lost = accept(sessions, 2)
    unpublish(engine, lost)
    broker = Broker(queued=100)
    done = relay(engine, broker, ahead=timedelta(0)).run_once()
    assert broker.sent == [lost]
    assert (done.published, done.republished) == (1, 0)
    status, published_at, republications = columns(engine, lost)
    assert (status, republications) == (OrderStatus.ACCEPTED, 1) and published_at is not None
    assert relay(engine, broker, ahead=timedelta(0)).run_once().published == 0


def test_a_recent_order_is_left_alone(sessions: sessionmaker[Session], engine: Engine) -> None:
    accept(sessions, 3)
    broker = Broker(queued=0)
    done = relay(engine, broker, ahead=timedelta(seconds=5), republish_after_s=60).run_once()
    assert broker.sent == [] and done.candidates == 0


def test_a_backlog_is_not_republished(sessions: sessionmaker[Session], engine: Engine) -> None:
    accept(sessions, 5)
    broker = Broker(queued=5)  # every old order's message may still be queued
    done = relay(engine, broker).run_once()
    assert broker.sent == []
    assert (done.candidates, done.queued, done.republished) == (5, 5, 0)


def test_a_lost_queue_is_republished_once(sessions: sessionmaker[Session], engine: Engine) -> None:
    ids = accept(sessions, 4)
    broker = Broker(queued=0)
    done = relay(engine, broker).run_once()
    assert sorted(broker.sent) == sorted(ids)
    assert done.republished == 4
    assert relay(engine, broker).run_once().republished == 0, "republished twice"
    assert all(columns(engine, order_id)[2] == 1 for order_id in ids)


def test_a_queue_shorter_than_the_candidates_gets_the_difference_oldest_first(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    ids = accept(sessions, 5)
    with engine.begin() as connection:  # ids[3] and ids[4] are the oldest publications
        for age_s, order_id in ((10, ids[3]), (20, ids[4])):
            connection.execute(
                update(ORDERS)
                .where(ORDERS.c.id == uuid.UUID(order_id))
                .values(published_at=datetime.now(UTC) - timedelta(seconds=age_s))
            )
    broker = Broker(queued=3)
    done = relay(engine, broker).run_once()
    assert (done.candidates, done.republished) == (5, 2)
    assert sorted(broker.sent) == sorted([ids[3], ids[4]])


def test_a_pending_order_is_republished_only_when_no_worker_took_it_lately(
    sessions: sessionmaker[Session], engine: Engine, make_store: MakeStore
) -> None:
    store = make_store()
    worked, forgotten = request({"A": 1}), request({"A": 1})
    store.record(worked)
    store.record(forgotten)
    with engine.begin() as connection:
        connection.execute(
            update(ORDERS)
            .where(ORDERS.c.id == worked.order_id)
            .values(delivered_at=datetime.now(UTC) + LATER)
        )
    broker = Broker(queued=0)
    relay(engine, broker).run_once()
    assert broker.sent == [str(forgotten.order_id)]


def test_a_decided_order_is_never_published(
    sessions: sessionmaker[Session], engine: Engine, make_store: MakeStore
) -> None:
    order = request({"A": 1})
    with sessions.begin() as session:
        store_accepted(session, order)
    make_store().end(order, OrderStatus.FAILED, "lock_unavailable")
    broker = Broker(queued=0)
    relay(engine, broker).run_once()
    unpublish(engine, str(order.order_id))
    relay(engine, broker).run_once()
    assert broker.sent == []


def test_a_failed_publish_leaves_the_orders_for_the_next_round(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    ids = accept(sessions, 3)
    for order_id in ids:
        unpublish(engine, order_id)
    broker = Broker(fail_after=1)
    done = relay(engine, broker, ahead=timedelta(0)).run_once()
    assert (done.published, done.failed) == (1, 2)
    unsent = [order_id for order_id in ids if order_id not in broker.sent]
    assert [columns(engine, order_id)[1:] for order_id in unsent] == [(None, 0), (None, 0)]
    broker.fail_after = None
    assert relay(engine, broker, ahead=timedelta(0)).run_once().published == 2
    assert sorted(broker.sent) == sorted(ids)


def test_two_relays_at_once_never_publish_an_order_twice(database_url: str) -> None:
    # PostgreSQL only: SQLite serializes writers, and the demo runs one relay.
    engine = create_db_engine(database_url, pool_size=4)
    ids = accept(session_factory(engine), 300)
    broker = Broker(queued=0)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def rounds(make: Callable[[], OrderRelay]) -> None:
        try:
            one = make()
            start.wait()
            while one.run_once().republished:
                pass
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=rounds, args=(lambda: relay(engine, broker, batch_limit=20),))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    engine.dispose()
    assert sorted(broker.sent) == sorted(ids), "an order was published twice, or never"
