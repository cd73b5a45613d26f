"""``flashsale_place`` writes the own order's row once on the uncontended path (PostgreSQL).

A new order is inserted with its decision, an ``accepted`` one (the intake
record) goes to its decision in one update. The writes are counted by the
transaction's own statistics (``pg_stat_xact_user_tables``), around one call of
the function in a transaction of the test's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from tasks.db import create_db_engine, session_factory
from tasks.intake import store_accepted
from tasks.models import OrderStatus
from tasks.pg_store import PLACE_FUNCTION, record_pending
from tasks.store import StoreOptions
from tasks.validation import OrderRequest
from tests.domain import movements, order_row, request, stock
from tests.sale import seed_products
from worker.wiring import build_store

#: Rows of ``orders`` the transaction inserted and updated so far.
ORDER_WRITES = text(
    "SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'orders'"
)
#: How long the race test waits for the statement to queue behind the other insert.
WAIT_FOR_LOCK_S = 10.0


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def place(order: OrderRequest, *, limit: int = 500, wait_ms: float | None = 2.5) -> dict[str, Any]:
    """Return ``flashsale_place``'s parameters for a first delivery of ``order``."""
    return {
        "id": order.order_id,
        "customer": order.customer_id,
        "hash": order.payload_hash,
        "skus": [line.sku for line in order.lines],
        "quantities": [line.quantity for line in order.lines],
        "record": True,
        "fence": None,
        "token": None,
        "limit": limit,
        "wait": wait_ms,
        "budget": None,
        "max": 3,
    }


def placed_with_writes(engine: Engine, params: dict[str, Any]) -> tuple[Any, tuple[int, int]]:
    """Run ``flashsale_place`` in one committed transaction; return its row and the
    (inserted, updated) rows of ``orders`` it wrote."""
    with engine.begin() as connection:
        before = connection.execute(ORDER_WRITES).one()
        row = connection.execute(PLACE_FUNCTION, params).one()
        after = connection.execute(ORDER_WRITES).one()
    return row, (after[0] - before[0], after[1] - before[1])


def test_a_new_order_is_inserted_with_its_decision(engine: Engine) -> None:
    seed_products(engine, {"A": 3})
    order = request({"A": 2})
    row, writes = placed_with_writes(engine, place(order))
    assert (row.status, row.attempts, list(row.decided_ids)) == (
        "confirmed",
        1,
        [str(order.order_id)],
    )
    assert writes == (1, 0)
    stored = order_row(engine, order.order_id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.lock_wait_ms) == ("confirmed", 1, 2.5)
    assert (stock(engine), movements(engine, order.order_id)) == ({"A": 1}, [("A", -2)])


def test_an_accepted_order_is_decided_in_one_update(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    seed_products(engine, {"A": 1})
    order = request({"A": 2})
    with sessions.begin() as session:
        store_accepted(session, order)
    row, writes = placed_with_writes(engine, place(order))
    assert (row.status, row.reason, row.attempts) == ("rejected", "insufficient_stock", 1)
    assert writes == (0, 1)
    with engine.connect() as connection:
        delivered = connection.execute(
            text("SELECT delivered_at IS NOT NULL FROM orders WHERE id = :id"),
            {"id": order.order_id},
        ).scalar_one()
    assert delivered


def test_a_new_order_past_the_batch_is_written_once_and_stays_pending(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    seed_products(engine, {"A": 5})
    with sessions.begin() as session:
        older = request({"A": 1})
        record_pending(session, older)
    order = request({"A": 1})
    row, writes = placed_with_writes(engine, place(order, limit=1))
    assert (row.status, list(row.decided_ids)) == ("pending", [str(older.order_id)])
    assert writes == (1, 1)  # the own order's insert, the older order's decision
    stored = order_row(engine, order.order_id)
    assert stored is not None and (stored.status, stored.lock_wait_ms) == ("pending", None)


def test_an_accepted_order_takes_its_turn_before_younger_pending_ones(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    seed_products(engine, {"A": 1})
    order = request({"A": 1})
    with sessions.begin() as session:
        store_accepted(session, order)
    with sessions.begin() as session:
        younger = request({"A": 1})
        record_pending(session, younger)
    row, _ = placed_with_writes(engine, place(order))
    assert row.status == "confirmed"
    assert dict(zip(row.decided_ids, row.decided_statuses, strict=True)) == {
        str(order.order_id): "confirmed",
        str(younger.order_id): "rejected",
    }


def test_a_new_order_recorded_meanwhile_by_another_delivery_is_placed_again(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasks.pg_store")
    seed_products(engine, {"A": 3})
    order = request({"A": 2})
    store = build_store(engine, StoreOptions(max_deliveries=3))
    outcome: list[Any] = []
    with engine.connect() as other:
        other.begin()
        # Another delivery's record, not committed yet: the placement cannot see
        # the row, decides the order, then queues behind this insert of its id.
        record_pending(other, order)
        placing = threading.Thread(
            target=lambda: outcome.append(
                store.settle(
                    order, record=True, fence=None, lease_token=None, wait_ms=None, budget_ms=None
                )
            )
        )
        placing.start()
        deadline_s = time.monotonic() + WAIT_FOR_LOCK_S
        while not _waiting_for_a_lock(engine) and time.monotonic() < deadline_s:
            time.sleep(0.01)
        other.commit()
    placing.join(WAIT_FOR_LOCK_S)
    store.dispose()
    assert len(outcome) == 1
    state = outcome[0].state
    assert (state.status, state.attempts) == (OrderStatus.CONFIRMED, 2)
    assert (stock(engine), movements(engine, order.order_id)) == ({"A": 1}, [("A", -2)])
    assert "recorded meanwhile" in caplog.text


def _waiting_for_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_a_new_order_id_is_never_inserted_twice(engine: Engine) -> None:
    seed_products(engine, {"A": 3})
    order = request({"A": 1})
    placed_with_writes(engine, place(order))
    row, writes = placed_with_writes(engine, place(order))
    assert (row.status, row.attempts, writes) == ("confirmed", 2, (0, 1))
    assert movements(engine, order.order_id) == [("A", -1)]
