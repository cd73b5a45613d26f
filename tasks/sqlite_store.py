"""`OrderStore` on SQLite (the demo): each step one transaction, the rules in Python.

Several worker processes share the file; every transaction is ``BEGIN
IMMEDIATE`` (see `tasks.db`), so steps simply queue for the write lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import Engine, case, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from tasks.db import session_factory
from tasks.errors import OrderConflict
from tasks.models import ORDER_ITEMS, ORDERS, TERMINAL, OrderStatus
from tasks.orders import Executor, OrderState, find_order, record_rejected
from tasks.settlement import Fencing, settle
from tasks.store import (
    DEFAULT_OPTIONS,
    StepResult,
    StoreOptions,
    budget_check,
    counted_delivery,
    end_order,
    read_highest_fence,
    read_known_skus,
    read_state,
    token_digest,
    translated,
)
from tasks.validation import OrderRequest


class SqliteOrderStore:
    """Records, settles and reads orders in an SQLite file.

    :param engine: the process's SQLite engine (`tasks.db.create_db_engine`).
    :param options: delivery limit (the pool size does not apply to SQLite).
    """

    def __init__(self, *, engine: Engine, options: StoreOptions = DEFAULT_OPTIONS) -> None:
        self._sessions = session_factory(engine)
        self._options = options

    def dispose(self, *, close: bool = True) -> None:
        """Nothing of its own to drop: the engine belongs to the caller."""

    def record(self, request: OrderRequest) -> StepResult:
        """Record the order as pending, or count a redelivery (see `OrderStore.record`)."""
        with self._transaction() as session:
            return self._record_in(session, request)

    def state(self, order_id: uuid.UUID) -> OrderState:
        """Read a recorded order's current state."""
        with self._transaction() as session:
            return read_state(session, order_id)

    def settle(
        self,
        request: OrderRequest,
        *,
        record: bool,
        fence: int | None,
        lease_token: str | None,
        wait_ms: float | None,
        budget_ms: float | None,
    ) -> StepResult:
        """Settle the orders within the order's SKUs (see `OrderStore.settle`)."""
        check = budget_check(budget_ms)
        with self._transaction() as session:
            if record:
                step = self._record_in(session, request)
                if step.state.status in TERMINAL:
                    return step
            digest = token_digest(lease_token)
            fencing = None if fence is None else Fencing(fence, digest or "")
            decisions = settle(
                session,
                skus=request.skus,
                fencing=fencing,
                before_commit=check,
                own_order_id=request.order_id,
                # Without a lock there is no wait to store (NULL, as on PostgreSQL).
                own_lock_wait_ms=wait_ms,
            )
            found = find_order(session, request.order_id)
        assert found is not None, "recorded above or by an earlier step"
        return StepResult(found, tuple(decisions))

    def end(self, request: OrderRequest, status: OrderStatus, reason: str) -> StepResult:
        """End the order unless decided (see `OrderStore.end`)."""
        with self._transaction() as session:
            return end_order(session, request, status, reason, record_pending)

    def reject_invalid(self, order_id: uuid.UUID, customer_id: object, reason: str) -> StepResult:
        """Store an invalid order as rejected (see `OrderStore.reject_invalid`)."""
        with self._transaction() as session:
            state, decision = record_rejected(session, sqlite.insert, order_id, customer_id, reason)
        return StepResult(state, () if decision is None else (decision,))

    def highest_fence(self, skus: Sequence[str]) -> int:
        """Return the highest fence that wrote the stock of any of ``skus`` (0 if none)."""
        with self._transaction() as session:
            return read_highest_fence(session, skus)

    def known_skus(self, skus: Sequence[str]) -> frozenset[str]:
        """Return which of ``skus`` are products."""
        with self._transaction() as session:
            return read_known_skus(session, skus)

    def _record_in(self, session: Session, request: OrderRequest) -> StepResult:
        state = record_pending(session, request)
        return counted_delivery(session, state, self._options.max_deliveries)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with translated(), self._sessions.begin() as session:
            yield session


def record_pending(executor: Executor, request: OrderRequest) -> OrderState:
    """Insert the order as pending, or count one more delivery of an existing one.

    An ``accepted`` order (stored by the intake record) becomes ``pending``.

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
        sqlite.insert(ORDERS)
        .values(**values)
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
    status, reason, payload_hash, attempts = executor.execute(statement).one()
    if payload_hash != request.payload_hash:
        raise OrderConflict(request.order_id)
    if attempts == 1 and not _has_lines(executor, request.order_id):
        executor.execute(
            insert(ORDER_ITEMS),
            [
                {"order_id": request.order_id, "sku": line.sku, "quantity": line.quantity}
                for line in request.lines
            ],
        )
    return OrderState(request.order_id, OrderStatus(status), reason, attempts)


def _has_lines(executor: Executor, order_id: uuid.UUID) -> bool:
    """True when the order's lines are stored (the intake record stores them up front)."""
    found = executor.execute(
        select(ORDER_ITEMS.c.sku).where(ORDER_ITEMS.c.order_id == order_id).limit(1)
    ).first()
    return found is not None
