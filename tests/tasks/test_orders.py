"""Order rows on PostgreSQL and SQLite: idempotent recording, conflicts, outcomes."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from tasks.errors import OrderConflict
from tasks.models import OrderStatus
from tasks.orders import OrderState, end_pending, find_order
from tasks.orders import record_rejected as record_rejected_with
from tests.domain import cart, order_row, record_pending, request, settle_now, stock
from tests.sale import seed_products
from tests.tasks.conftest import Record


def record_rejected(
    session: Session, order_id: uuid.UUID, customer_id: object, reason: str
) -> OrderState:
    postgres = session.get_bind().dialect.name == "postgresql"
    upsert = postgresql.insert if postgres else sqlite.insert
    return record_rejected_with(session, upsert, order_id, customer_id, reason)[0]


def fail_pending(session: Session, order_id: uuid.UUID, reason: str) -> OrderState | None:
    end_pending(session, order_id, OrderStatus.FAILED, reason)
    return find_order(session, order_id)


def test_a_new_order_is_recorded_pending_with_its_cart(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    order = request({"A": 2, "B": 1})
    with sessions.begin() as session:
        state = record_pending(session, order)
    assert (state.status, state.reason, state.attempts) == (OrderStatus.PENDING, None, 1)
    assert cart(engine, order.order_id) == {"A": 2, "B": 1}


def test_recording_the_same_order_again_counts_a_delivery_and_keeps_one_cart(
    sessions: sessionmaker[Session], engine: Engine, record: Record
) -> None:
    order = record({"A": 2, "B": 1})
    for _ in range(2):
        with sessions.begin() as session:
            state = record_pending(session, order)
    assert (state.status, state.attempts) == (OrderStatus.PENDING, 3)
    assert cart(engine, order.order_id) == {"A": 2, "B": 1}


def test_recording_a_decided_order_again_returns_its_outcome(
    sessions: sessionmaker[Session], engine: Engine, record: Record
) -> None:
    seed_products(engine, {"A": 5})
    order = record({"A": 2})
    settle_now(sessions, ["A"])
    with sessions.begin() as session:
        state = record_pending(session, order)
    assert (state.status, state.attempts) == (OrderStatus.CONFIRMED, 2)
    assert stock(engine) == {"A": 3}


@pytest.mark.parametrize(
    ("items", "customer"),
    [({"A": 3}, "c1"), ({"A": 2, "B": 1}, "c1"), ({"A": 2}, "someone-else")],
    ids=["other-quantity", "other-cart", "other-customer"],
)
def test_the_same_id_with_another_payload_is_a_conflict_and_changes_nothing(
    sessions: sessionmaker[Session],
    engine: Engine,
    record: Record,
    items: dict[str, int],
    customer: str,
) -> None:
    first = record({"A": 2}, customer="c1")
    second = request(items, customer=customer, order_id=str(first.order_id))
    with pytest.raises(OrderConflict) as caught, sessions.begin() as session:
        record_pending(session, second)
    assert caught.value.order_id == first.order_id
    row = order_row(engine, first.order_id)
    assert row is not None
    assert (row.status, row.attempts, row.customer_id) == ("pending", 1, "c1")
    assert cart(engine, first.order_id) == {"A": 2}


def test_a_rejected_payload_is_stored_rejected_with_its_reason(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    order_id = uuid.uuid4()
    with sessions.begin() as session:
        state = record_rejected(session, order_id, "c9", "invalid_quantity")
    assert (state.status, state.reason) == (OrderStatus.REJECTED, "invalid_quantity")
    row = order_row(engine, order_id)
    assert row is not None
    assert (row.status, row.reason, row.customer_id) == ("rejected", "invalid_quantity", "c9")
    assert cart(engine, order_id) == {}


def test_a_rejection_stores_an_unusable_customer_id_as_empty(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    order_id = uuid.uuid4()
    with sessions.begin() as session:
        record_rejected(session, order_id, {"not": "a string"}, "invalid_customer_id")
    row = order_row(engine, order_id)
    assert row is not None
    assert (row.status, row.customer_id) == ("rejected", "")


def test_a_rejection_leaves_an_existing_order_alone(
    sessions: sessionmaker[Session], engine: Engine, record: Record
) -> None:
    order = record({"A": 1})
    with sessions.begin() as session:
        state = record_rejected(session, order.order_id, "c1", "invalid_items")
    assert (state.status, state.reason) == (OrderStatus.PENDING, None)
    assert cart(engine, order.order_id) == {"A": 1}


def test_an_order_rejected_as_invalid_conflicts_with_a_later_valid_payload(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    order_id = uuid.uuid4()
    with sessions.begin() as session:
        record_rejected(session, order_id, "c1", "invalid_quantity")
    with pytest.raises(OrderConflict), sessions.begin() as session:
        record_pending(session, request({"A": 1}, order_id=str(order_id)))
    row = order_row(engine, order_id)
    assert row is not None
    assert (row.status, row.reason) == ("rejected", "invalid_quantity")


def test_fail_pending_fails_a_pending_order(
    sessions: sessionmaker[Session], engine: Engine, record: Record
) -> None:
    order = record({"A": 1})
    with sessions.begin() as session:
        state = fail_pending(session, order.order_id, "lock_unavailable")
    assert state is not None
    assert (state.status, state.reason) == (OrderStatus.FAILED, "lock_unavailable")
    row = order_row(engine, order.order_id)
    assert row is not None
    assert (row.status, row.reason) == ("failed", "lock_unavailable")


def test_fail_pending_leaves_a_decided_order_alone(
    sessions: sessionmaker[Session], engine: Engine, record: Record
) -> None:
    seed_products(engine, {"A": 1, "B": 0})
    confirmed, rejected = record({"A": 1}), record({"B": 1})
    settle_now(sessions, ["A", "B"])
    with sessions.begin() as session:
        states = [fail_pending(session, o.order_id, "too_late") for o in (confirmed, rejected)]
    assert [(s.status, s.reason) for s in states if s is not None] == [
        (OrderStatus.CONFIRMED, None),
        (OrderStatus.REJECTED, "insufficient_stock"),
    ]


def test_an_unknown_order_is_not_found_and_cannot_be_failed(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    order_id = uuid.uuid4()
    with sessions.begin() as session:
        assert find_order(session, order_id) is None
        assert fail_pending(session, order_id, "lock_unavailable") is None
    assert order_row(engine, order_id) is None
