"""Recording orders and reading them back: idempotent by order id, one statement each."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tasks.errors import OrderConflict
from tasks.models import Order, OrderItem, OrderStatus
from tasks.validation import OrderRequest


@dataclass(frozen=True, slots=True)
class OrderState:
    """What the database says of one order."""

    order_id: uuid.UUID
    status: OrderStatus
    reason: str | None
    attempts: int


def record_pending(session: Session, request: OrderRequest) -> OrderState:
    """Insert the order as pending, or count one more delivery of an existing one.

    :raises OrderConflict: the id exists with a different customer or cart.
    """
    values = {
        "id": request.order_id,
        "customer_id": request.customer_id,
        "status": OrderStatus.PENDING,
        "payload_hash": request.payload_hash,
        "attempts": 1,
    }
    statement = (
        _upsert(session, values)
        .on_conflict_do_update(index_elements=[Order.id], set_={"attempts": Order.attempts + 1})
        .returning(Order.status, Order.reason, Order.payload_hash, Order.attempts)
    )
    status, reason, payload_hash, attempts = session.execute(statement).one()
    if payload_hash != request.payload_hash:
        raise OrderConflict(request.order_id)
    if attempts == 1:
        session.execute(
            insert(OrderItem),
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
    customer = customer_id if isinstance(customer_id, str) else ""
    values = {
        "id": order_id,
        "customer_id": customer[:128],
        "status": OrderStatus.REJECTED,
        "reason": reason,
        "payload_hash": "",
        "attempts": 1,
        "decided_at": datetime.now(UTC),
    }
    session.execute(_upsert(session, values).on_conflict_do_nothing(index_elements=[Order.id]))
    state = find_order(session, order_id)
    assert state is not None  # inserted or already there, in this transaction
    return state


def fail_pending(session: Session, order_id: uuid.UUID, reason: str) -> OrderState | None:
    """Mark a still-pending order failed with ``reason``; a decided order is left alone."""
    session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == OrderStatus.PENDING)
        .values(status=OrderStatus.FAILED, reason=reason, decided_at=datetime.now(UTC))
    )
    return find_order(session, order_id)


def find_order(session: Session, order_id: uuid.UUID) -> OrderState | None:
    """Return the order's status, or None when no such order was recorded."""
    row = session.execute(
        select(Order.status, Order.reason, Order.attempts).where(Order.id == order_id)
    ).one_or_none()
    if row is None:
        return None
    return OrderState(order_id, OrderStatus(row.status), row.reason, row.attempts)


def _upsert(session: Session, values: dict[str, Any]) -> Any:
    """Return the dialect's INSERT that supports ON CONFLICT (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(Order).values(**values)
