"""Recording orders and reading them back: idempotent by order id, one statement each."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Uuid, bindparam, case, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tasks.errors import OrderConflict
from tasks.models import OPEN, ORDER_ITEMS, ORDERS, OrderStatus
from tasks.validation import OrderRequest


@dataclass(frozen=True, slots=True)
class OrderState:
    """What the database says of one order; ``attempts`` is None when it was not read."""

    order_id: uuid.UUID
    status: OrderStatus
    reason: str | None
    attempts: int | None


# One round trip on PostgreSQL: see migration 0002 (same algorithm as below).
RECORD_FUNCTION = text(
    "SELECT status, reason, payload_hash, attempts"
    " FROM flashsale_record(:id, :customer, :hash, :skus, :quantities)"
).bindparams(bindparam("id", type_=Uuid))


#: Where the statements of this module run: a session in a transaction, or an
#: autocommit connection (each statement its own transaction).
Executor = Session | Connection


def is_postgresql(session: Executor) -> bool:
    """True when the session's database runs the PostgreSQL functions of migration 0002."""
    bind = session if isinstance(session, Connection) else session.get_bind()
    return bind.dialect.name == "postgresql"


def record_pending(session: Executor, request: OrderRequest) -> OrderState:
    """Insert the order as pending, or count one more delivery of an existing one.

    An ``accepted`` order (stored by the intake record) becomes ``pending``.

    :raises OrderConflict: the id exists with a different customer or cart.
    """
    if is_postgresql(session):
        row = session.execute(
            RECORD_FUNCTION,
            {
                "id": request.order_id,
                "customer": request.customer_id,
                "hash": request.payload_hash,
                "skus": [line.sku for line in request.lines],
                "quantities": [line.quantity for line in request.lines],
            },
        ).one()
        if row.payload_hash != request.payload_hash:
            raise OrderConflict(request.order_id)
        return OrderState(request.order_id, OrderStatus(row.status), row.reason, row.attempts)
    values = {
        "id": request.order_id,
        "customer_id": request.customer_id,
        "status": OrderStatus.PENDING,
        "payload_hash": request.payload_hash,
        "attempts": 1,
    }
    statement = (
        _upsert(session, values)
        .on_conflict_do_update(
            index_elements=[ORDERS.c.id],
            set_={
                "attempts": ORDERS.c.attempts + 1,
                "delivered_at": datetime.now(UTC),
                "status": case(
                    (ORDERS.c.status == OrderStatus.ACCEPTED, OrderStatus.PENDING.value),
                    else_=ORDERS.c.status,
                ),
            },
        )
        .returning(ORDERS.c.status, ORDERS.c.reason, ORDERS.c.payload_hash, ORDERS.c.attempts)
    )
    status, reason, payload_hash, attempts = session.execute(statement).one()
    if payload_hash != request.payload_hash:
        raise OrderConflict(request.order_id)
    if attempts == 1 and not _has_lines(session, request.order_id):
        session.execute(
            insert(ORDER_ITEMS),
            [
                {"order_id": request.order_id, "sku": line.sku, "quantity": line.quantity}
                for line in request.lines
            ],
        )
    return OrderState(request.order_id, OrderStatus(status), reason, attempts)


def record_rejected(
    session: Session, order_id: uuid.UUID, customer_id: object, reason: str
) -> OrderState:
    """Store an order whose payload was invalid as rejected; an existing order is left alone."""
    # The id was part of what made the order invalid: keep it only if it can be stored.
    printable = isinstance(customer_id, str) and customer_id.isprintable()
    customer = customer_id if isinstance(customer_id, str) and printable else ""
    values = {
        "id": order_id,
        "customer_id": customer[:128],
        "status": OrderStatus.REJECTED,
        "reason": reason,
        "payload_hash": "",
        "attempts": 1,
        "decided_at": datetime.now(UTC),
    }
    session.execute(_upsert(session, values).on_conflict_do_nothing(index_elements=[ORDERS.c.id]))
    state = find_order(session, order_id)
    assert state is not None  # inserted or already there, in this transaction
    return state


def fail_pending(session: Executor, order_id: uuid.UUID, reason: str) -> OrderState | None:
    """Mark a still-open order failed with ``reason``; a decided order is left alone."""
    session.execute(
        update(ORDERS)
        .where(ORDERS.c.id == order_id, ORDERS.c.status.in_(OPEN))
        .values(status=OrderStatus.FAILED, reason=reason, decided_at=datetime.now(UTC))
    )
    return find_order(session, order_id)


def find_order(session: Executor, order_id: uuid.UUID) -> OrderState | None:
    """Return the order's status, or None when no such order was recorded."""
    row = session.execute(
        select(ORDERS.c.status, ORDERS.c.reason, ORDERS.c.attempts).where(ORDERS.c.id == order_id)
    ).one_or_none()
    if row is None:
        return None
    return OrderState(order_id, OrderStatus(row.status), row.reason, row.attempts)


def _has_lines(session: Executor, order_id: uuid.UUID) -> bool:
    """True when the order's lines are stored (an intake record stores them up front)."""
    found = session.execute(
        select(ORDER_ITEMS.c.sku).where(ORDER_ITEMS.c.order_id == order_id).limit(1)
    ).first()
    return found is not None


def _upsert(session: Executor, values: dict[str, Any]) -> Any:
    """Return the dialect's INSERT that supports ON CONFLICT (PostgreSQL or SQLite)."""
    module = postgresql if is_postgresql(session) else sqlite
    return module.insert(ORDERS).values(**values)
