"""The real stores on their databases: what each step leaves in the tables.

PostgreSQL (one autocommitted statement per step) and SQLite; the behaviour
shared with the in-memory fake is in test_store_contract.py.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import NoResultFound

from tasks.errors import DatabaseUnavailable, OrderConflict, OverBudget, StaleFence
from tasks.models import OrderStatus, Product
from tasks.orders import OrderState
from tasks.store import OrderStore
from tests.domain import fences, movements, order_row, request, stock
from tests.sale import seed_products
from tests.tasks.conftest import MakeStore, Record


@pytest.fixture
def store(make_store: MakeStore) -> OrderStore:
    return make_store(max_deliveries=3)


def outcome(state: OrderState) -> tuple[OrderStatus, str | None]:
    return state.status, state.reason


def test_one_step_records_and_settles_the_order_and_those_waiting(
    store: OrderStore, engine: Engine, record: Record
) -> None:
    seed_products(engine, {"A": 2})
    waiting = record({"A": 1})
    order = request({"A": 1})
    settled = store.settle(
        order, record=True, fence=4, lease_token="lease", wait_ms=1.5, budget_ms=5000.0
    )
    assert (outcome(settled.state), len(settled.decisions)) == ((OrderStatus.CONFIRMED, None), 2)
    assert settled.state.attempts == 1
    row, other = order_row(engine, order.order_id), order_row(engine, waiting.order_id)
    assert row is not None and other is not None
    assert (row.status, row.lock_wait_ms, other.status) == ("confirmed", 1.5, "confirmed")
    assert (stock(engine), fences(engine)) == ({"A": 0}, {"A": 4})


def test_a_settle_step_without_recording_decides_an_order_recorded_before(
    store: OrderStore, engine: Engine, record: Record
) -> None:
    seed_products(engine, {"A": 1})
    first, second = record({"A": 1}), record({"A": 1})
    settled = store.settle(
        second, record=False, fence=None, lease_token="lease", wait_ms=None, budget_ms=None
    )
    assert outcome(settled.state) == (OrderStatus.REJECTED, "insufficient_stock")
    assert outcome(store.state(first.order_id)) == (OrderStatus.CONFIRMED, None)
    row = order_row(engine, second.order_id)
    assert row is not None and row.attempts == 1
    assert row.lock_wait_ms is None  # no lock, no wait stored, on either database


def test_a_step_over_its_budget_commits_nothing(store: OrderStore, engine: Engine) -> None:
    seed_products(engine, {"A": 2})
    order = request({"A": 1})
    with pytest.raises(OverBudget):
        # No time to spare at all: the check before the commit must refuse.
        store.settle(order, record=True, fence=1, lease_token="lease", wait_ms=0.0, budget_ms=0.0)
    assert order_row(engine, order.order_id) is None
    assert (stock(engine), fences(engine), movements(engine)) == ({"A": 2}, {"A": 0}, [])


def test_a_stale_fence_commits_nothing(store: OrderStore, engine: Engine) -> None:
    seed_products(engine, {"A": 2})
    with engine.begin() as connection:
        connection.execute(update(Product).values(fence=9))
    order = request({"A": 1})
    with pytest.raises(StaleFence):
        store.settle(
            order, record=True, fence=8, lease_token="lease", wait_ms=0.0, budget_ms=5000.0
        )
    assert order_row(engine, order.order_id) is None
    assert (stock(engine), movements(engine)) == ({"A": 2}, [])


def test_a_replayed_order_keeps_its_decision_and_counts_the_delivery(
    store: OrderStore, engine: Engine
) -> None:
    seed_products(engine, {"A": 2})
    order = request({"A": 1})
    store.settle(order, record=True, fence=None, lease_token="lease", wait_ms=None, budget_ms=None)
    again = store.settle(
        order, record=True, fence=None, lease_token="lease", wait_ms=None, budget_ms=None
    )
    assert (outcome(again.state), again.state.attempts, len(again.decisions)) == (
        (OrderStatus.CONFIRMED, None),
        2,
        0,
    )
    assert stock(engine) == {"A": 1}


def test_a_reused_id_with_another_cart_is_a_conflict(store: OrderStore, engine: Engine) -> None:
    seed_products(engine, {"A": 2, "B": 2})
    order = request({"A": 1})
    store.settle(order, record=True, fence=None, lease_token="lease", wait_ms=None, budget_ms=None)
    other = request({"B": 1}, order_id=str(order.order_id))
    with pytest.raises(OrderConflict):
        store.settle(
            other, record=True, fence=None, lease_token="lease", wait_ms=None, budget_ms=None
        )
    with pytest.raises(OrderConflict):
        store.record(other)
    assert stock(engine) == {"A": 1, "B": 2}
    # The refused deliveries count nothing: each step is its own transaction.
    assert order_row(engine, order.order_id).attempts == 1  # type: ignore[union-attr]


def test_an_order_delivered_too_often_fails_in_either_step(
    store: OrderStore, engine: Engine
) -> None:
    seed_products(engine, {"A": 2})
    held, settled = request({"A": 1}), request({"A": 1})
    for _ in range(3):  # max_deliveries=3: the fourth delivery is one too many
        assert store.record(held).state.status is OrderStatus.PENDING
        assert store.record(settled).state.status is OrderStatus.PENDING
    assert outcome(store.record(held).state) == (OrderStatus.FAILED, "too_many_attempts")
    fourth = store.settle(
        settled, record=True, fence=None, lease_token="lease", wait_ms=None, budget_ms=None
    )
    assert outcome(fourth.state) == (OrderStatus.FAILED, "too_many_attempts")
    assert stock(engine) == {"A": 2}


#: The PostgreSQL store runs its settlement on the driver's cursor: its errors must
#: come out as they do from SQLAlchemy's statements.
ON_POSTGRESQL = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)


@ON_POSTGRESQL
def test_a_settlement_on_a_lost_connection_is_unavailable_then_runs_on_a_fresh_one(
    store: OrderStore, engine: Engine
) -> None:
    seed_products(engine, {"A": 2})
    first = request({"A": 1})
    store.settle(first, record=True, fence=1, lease_token="a", wait_ms=None, budget_ms=None)
    with engine.connect() as connection:  # the store's pooled connection dies under it
        ended = connection.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    assert ended >= 1
    order = request({"A": 1})
    with pytest.raises(DatabaseUnavailable):
        store.settle(order, record=True, fence=2, lease_token="b", wait_ms=None, budget_ms=None)
    settled = store.settle(
        order, record=True, fence=2, lease_token="b", wait_ms=None, budget_ms=None
    )
    assert outcome(settled.state) == (OrderStatus.CONFIRMED, None)
    assert stock(engine) == {"A": 0}


@ON_POSTGRESQL
def test_a_settlement_error_that_is_not_an_outage_comes_out_as_the_driver_error(
    store: OrderStore, engine: Engine
) -> None:
    seed_products(engine, {"A": 2})
    order = request({"A": 1})
    # Never recorded and not recorded now: the step finds no such order.
    with pytest.raises(NoResultFound):
        store.settle(order, record=False, fence=1, lease_token="a", wait_ms=None, budget_ms=None)
    assert outcome(
        store.settle(
            order, record=True, fence=1, lease_token="a", wait_ms=None, budget_ms=None
        ).state
    ) == (OrderStatus.CONFIRMED, None)
