"""The database steps of placing an order, each one round trip on PostgreSQL.

On PostgreSQL every step is a single statement sent in autocommit mode: the
functions of migrations 0002 and 0003 are atomic, so a statement is its own
transaction, and a step costs one round trip instead of BEGIN, statement and
COMMIT. On SQLite the same steps run the Python implementation
(`tasks.orders`, `tasks.settlement`) in a transaction each.
Driver errors that mean "try later" come out as `DatabaseUnavailable`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Uuid, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tasks.db import create_db_engine, session_factory
from tasks.errors import DatabaseUnavailable, OrderConflict, OverBudget, StaleFence
from tasks.models import TERMINAL, OrderStatus
from tasks.orders import Executor, OrderState, fail_pending, find_order, record_pending
from tasks.settlement import BATCH_LIMIT, STALE_FENCE_SQLSTATE, highest_fence, settle
from tasks.validation import OrderRequest

#: The SQLSTATE flashsale_place raises when it ran longer than its budget.
OVER_BUDGET_SQLSTATE = "FS002"
PLACE_FUNCTION = text(
    "SELECT status, reason, payload_hash, attempts, settled FROM flashsale_place("
    ":id, :customer, :hash, :skus, :quantities, :record, :fence, :limit, :wait, :budget, :max)"
).bindparams(bindparam("id", type_=Uuid))


@dataclass(frozen=True, slots=True)
class Settled:
    """The order's state after a settle step, and how many orders that step decided."""

    state: OrderState
    decided: int


class OrderStore:
    """Records, settles and reads orders for one process.

    :param engine: the process's engine (PostgreSQL or SQLite); on PostgreSQL the
        store also opens a pool of autocommit connections to the same database.
    :param max_deliveries: deliveries of one order after which it is failed as poison.
    :param pool_size: connections kept in that autocommit pool.
    """

    def __init__(self, *, engine: Engine, max_deliveries: int = 20, pool_size: int = 2) -> None:
        self._sessions = session_factory(engine)
        self._postgresql = engine.dialect.name == "postgresql"
        # A pool of its own, in autocommit from the start (see `create_db_engine`).
        self._statements = (
            create_db_engine(engine.url, pool_size=pool_size, autocommit=True)
            if self._postgresql
            else None
        )
        self._max_deliveries = max_deliveries

    def dispose(self, *, close: bool = True) -> None:
        """Drop the store's own connections; ``close=False`` in a forked child."""
        if self._statements is not None:
            self._statements.dispose(close=close)

    def record(self, request: OrderRequest) -> OrderState:
        """Record the order as pending (or count a redelivery); return its state.

        :raises OrderConflict: the id was used with another payload.
        """
        with self._step() as step:
            return self._record_in(step, request)

    def state(self, order_id: uuid.UUID) -> OrderState:
        """Read a recorded order's current state."""
        with self._step() as step:
            found = find_order(step, order_id)
        assert found is not None, "a recorded order cannot vanish"
        return found

    def settle(
        self,
        request: OrderRequest,
        *,
        record: bool,
        fence: int | None,
        wait_ms: float | None,
        budget_ms: float | None,
    ) -> Settled:
        """Settle the pending orders within the order's SKUs, recording it first if asked.

        :param record: also record the order (its first step in this task run).
        :param fence: the lease's fence, or None without a lock.
        :param wait_ms: how long the order waited for its lock, stored with it.
        :param budget_ms: how long the step may take before its lease is in doubt;
            past it nothing is committed and `OverBudget` is raised.
        :raises OrderConflict: the id was used with another payload.
        :raises StaleFence: a newer lease wrote these SKUs; nothing was committed.
        """
        if self._postgresql:
            return self._settle_in_postgresql(request, record, fence, wait_ms, budget_ms)
        check = _budget_check(budget_ms)
        with self._transaction() as session:
            if record:
                state = self._record_in(session, request)
                if state.status in TERMINAL:
                    return Settled(state, 0)
            # Without a lock there is no wait to store (NULL, as on PostgreSQL).
            own = None if wait_ms is None else (request.order_id, wait_ms)
            settlement = settle(
                session, skus=request.skus, fence=fence, own_order=own, before_commit=check
            )
            found = find_order(session, request.order_id)
        assert found is not None, "recorded above or by an earlier step"
        return Settled(found, len(settlement.decided))

    def fail(self, request: OrderRequest, reason: str) -> OrderState:
        """End the order ``failed`` with ``reason`` unless it was decided; record it if needed."""
        with self._transaction() as session:
            # Not a new delivery: record only an order that never reached the database.
            state = find_order(session, request.order_id) or record_pending(session, request)
            if state.status in TERMINAL:
                return state
            failed = fail_pending(session, request.order_id, reason)
        assert failed is not None, "recorded in this transaction"
        return failed

    def highest_fence(self, skus: tuple[str, ...]) -> int:
        """Return the highest fence that wrote the stock of any of ``skus`` (0 if none)."""
        with self._transaction() as session:
            return highest_fence(session, skus)

    def _record_in(self, step: Executor, request: OrderRequest) -> OrderState:
        state = record_pending(step, request)
        if state.status is OrderStatus.PENDING and (state.attempts or 0) > self._max_deliveries:
            # Redelivered again and again (a crash in its path): stop, visibly.
            state = fail_pending(step, request.order_id, "too_many_attempts") or state
        return state

    def _settle_in_postgresql(
        self,
        request: OrderRequest,
        record: bool,
        fence: int | None,
        wait_ms: float | None,
        budget_ms: float | None,
    ) -> Settled:
        params: dict[str, Any] = {
            "id": request.order_id,
            "customer": request.customer_id,
            "hash": request.payload_hash,
            "skus": [line.sku for line in request.lines],
            "quantities": [line.quantity for line in request.lines],
            "record": record,
            "fence": fence,
            "limit": BATCH_LIMIT,
            "wait": wait_ms,
            "budget": budget_ms,
            "max": self._max_deliveries,
        }
        try:
            with self._step() as step:
                row = step.execute(PLACE_FUNCTION, params).one()
        except DBAPIError as error:
            code = getattr(error.orig, "pgcode", None)
            if code == STALE_FENCE_SQLSTATE:
                raise StaleFence(",".join(request.skus), fence) from None
            if code == OVER_BUDGET_SQLSTATE and budget_ms is not None:
                raise OverBudget(budget_ms) from None
            raise
        if row.payload_hash != request.payload_hash:
            raise OrderConflict(request.order_id)
        state = OrderState(request.order_id, OrderStatus(row.status), row.reason, row.attempts)
        return Settled(state, row.settled)

    @contextmanager
    def _step(self) -> Iterator[Executor]:
        """One step: an autocommit connection on PostgreSQL, a transaction on SQLite."""
        if self._statements is None:
            with self._transaction() as session:
                yield session
            return
        with _translated(), self._statements.connect() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A session in one transaction."""
        with _translated(), self._sessions.begin() as session:
            yield session


def _budget_check(budget_ms: float | None) -> Callable[[], None]:
    """Return a check that raises `OverBudget` once ``budget_ms`` have passed since now."""
    started_s = time.monotonic()

    def check() -> None:
        if budget_ms is not None and (time.monotonic() - started_s) * 1000 > budget_ms:
            raise OverBudget(budget_ms)

    return check


@contextmanager
def _translated() -> Iterator[None]:
    """Turn driver errors that mean "the database is away" into `DatabaseUnavailable`."""
    try:
        yield
    except DBAPIError as error:
        if error.connection_invalidated or _is_operational(error):
            raise DatabaseUnavailable(str(error.orig).strip()[:300]) from None
        raise


def _is_operational(error: DBAPIError) -> bool:
    name = type(error.orig).__name__
    return name in {"OperationalError", "InterfaceError"} or "Operational" in type(error).__name__
