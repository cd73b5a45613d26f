"""Order rows read and written with SQLAlchemy Core, the same statements on either database.

Recording a new order differs per database (a PostgreSQL function, an SQLite
upsert) and lives with each store; what is here is shared by both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from tasks.models import OPEN, ORDERS, OrderStatus

#: Where the statements of this module run: a session in a transaction, or an
#: autocommit connection (each statement its own transaction).
Executor = Session | Connection
#: The dialect's INSERT that supports ON CONFLICT (``sqlalchemy.dialects.<name>.insert``).
Upsert = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class OrderState:
    """What the database says of one order; ``attempts`` is None when it was not read."""

    order_id: uuid.UUID
    status: OrderStatus
    reason: str | None
    attempts: int | None


@dataclass(frozen=True, slots=True)
class Decision:
    """One order moved to a terminal state by one committed step.

    :param age_s: seconds from the order's creation to the decision (None if unknown).
    """

    order_id: uuid.UUID
    status: OrderStatus
    reason: str | None
    age_s: float | None


def record_rejected(
    session: Session, upsert: Upsert, order_id: uuid.UUID, customer_id: object, reason: str
) -> tuple[OrderState, Decision | None]:
    """Store an order whose payload was invalid as rejected; an existing order is left alone.

    Returns the stored state, and the decision when this call made it.
    """
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
    inserted = session.execute(
        upsert(ORDERS)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[ORDERS.c.id])
        .returning(ORDERS.c.id)
    ).one_or_none()
    state = find_order(session, order_id)
    assert state is not None  # inserted or already there, in this transaction
    decision = None if inserted is None else Decision(order_id, OrderStatus.REJECTED, reason, 0.0)
    return state, decision


def end_pending(
    session: Executor, order_id: uuid.UUID, status: OrderStatus, reason: str
) -> Decision | None:
    """Move a still-open order to ``status`` with ``reason``; a decided one is left alone.

    Open: ``pending``, or ``accepted`` (stored by the intake record, never delivered).

    Returns the decision when this call made it.
    """
    row = session.execute(
        update(ORDERS)
        .where(ORDERS.c.id == order_id, ORDERS.c.status.in_(OPEN))
        .values(status=status, reason=reason, decided_at=datetime.now(UTC))
        .returning(ORDERS.c.created_at, ORDERS.c.decided_at)
    ).one_or_none()
    if row is None:
        return None
    return Decision(order_id, status, reason, age_s(row.created_at, row.decided_at))


def find_order(session: Executor, order_id: uuid.UUID) -> OrderState | None:
    """Return the order's status, or None when no such order was recorded."""
    row = session.execute(
        select(ORDERS.c.status, ORDERS.c.reason, ORDERS.c.attempts).where(ORDERS.c.id == order_id)
    ).one_or_none()
    if row is None:
        return None
    return OrderState(order_id, OrderStatus(row.status), row.reason, row.attempts)


def age_s(created_at: datetime | None, decided_at: datetime) -> float | None:
    """Seconds from ``created_at`` to ``decided_at``; naive times are UTC (SQLite)."""
    if created_at is None:
        return None
    created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
    decided = decided_at if decided_at.tzinfo else decided_at.replace(tzinfo=UTC)
    return max((decided - created).total_seconds(), 0.0)
