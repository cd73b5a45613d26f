"""`OrderStore` on PostgreSQL: each step of the hot path is one autocommitted statement.

The functions of ``tasks/sql`` are atomic, so a statement is its own transaction,
and a step costs one round trip instead of BEGIN, statement and COMMIT. The rare
steps (ending an order without settling, storing a rejection) run in a
transaction of a few statements.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import namedtuple
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, TextClause, Uuid, bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, MultipleResultsFound, NoResultFound
from sqlalchemy.orm import Session

from tasks.db import create_db_engine, session_factory
from tasks.errors import OrderConflict, OverBudget, StaleFence
from tasks.models import OrderStatus
from tasks.orders import Decision, Executor, OrderState, record_rejected
from tasks.settlement import BATCH_LIMIT
from tasks.store import (
    DEFAULT_OPTIONS,
    StepResult,
    StoreOptions,
    counted_delivery,
    end_order,
    read_highest_fence,
    read_known_skus,
    read_state,
    token_digest,
    translated,
)
from tasks.validation import OrderRequest

logger = logging.getLogger(__name__)
#: The SQLSTATE flashsale_settle raises when a newer (or equal, other) fence wrote the stock.
STALE_FENCE_SQLSTATE = "FS001"
#: The SQLSTATE flashsale_place raises when it ran longer than its budget.
OVER_BUDGET_SQLSTATE = "FS002"
#: unique_violation: flashsale_place raises it on ORDERS_PRIMARY_KEY when another
#: delivery inserted a new order's row while this one was deciding it.
UNIQUE_VIOLATION_SQLSTATE = "23505"
ORDERS_PRIMARY_KEY = "orders_pkey"
RECORD_FUNCTION = text(
    "SELECT status, reason, payload_hash, attempts"
    " FROM flashsale_record(:id, :customer, :hash, :skus, :quantities)"
).bindparams(bindparam("id", type_=Uuid))
PLACE_FUNCTION = text(
    "SELECT status, reason, payload_hash, attempts, decided_ids, decided_statuses,"
    " decided_reasons, decided_ages FROM flashsale_place(:id, :customer, :hash, :skus,"
    " :quantities, :record, :fence, :token, :limit, :wait, :budget, :max)"
).bindparams(bindparam("id", type_=Uuid))


class PostgresOrderStore:
    """Records, settles and reads orders in PostgreSQL.

    :param engine: the process's engine; the store opens its own pool of
        autocommit connections to the same database for the one-statement steps.
    :param options: delivery limit and pool size.
    """

    def __init__(self, *, engine: Engine, options: StoreOptions = DEFAULT_OPTIONS) -> None:
        self._sessions = session_factory(engine)
        # A pool of its own, in autocommit from the start (see `create_db_engine`).
        self._statements = create_db_engine(
            engine.url, pool_size=options.pool_size, autocommit=True
        )
        self._options = options
        self._place_sql = driver_sql(PLACE_FUNCTION, self._statements)

    def dispose(self, *, close: bool = True) -> None:
        """Drop the store's own connections; ``close=False`` in a forked child."""
        self._statements.dispose(close=close)

    def record(self, request: OrderRequest) -> StepResult:
        """Record the order as pending, or count a redelivery (see `OrderStore.record`)."""
        with self._statement() as connection:
            state = record_pending(connection, request)
            return counted_delivery(connection, state, self._options.max_deliveries)

    def state(self, order_id: uuid.UUID) -> OrderState:
        """Read a recorded order's current state."""
        with self._statement() as connection:
            return read_state(connection, order_id)

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
        """Record (if asked) and settle in one statement (see `OrderStore.settle`)."""
        params: dict[str, Any] = {
            "id": request.order_id,
            "customer": request.customer_id,
            "hash": request.payload_hash,
            "skus": [line.sku for line in request.lines],
            "quantities": [line.quantity for line in request.lines],
            "record": record,
            "fence": fence,
            "token": None if fence is None else token_digest(lease_token),
            "limit": BATCH_LIMIT,
            "wait": wait_ms,
            "budget": budget_ms,
            "max": self._options.max_deliveries,
        }
        started_s = time.monotonic()
        try:
            row = self._one_row(self._place_sql, params)
        except DBAPIError as error:
            if not (record and _is_new_order_race(error)):
                _raise_domain_error(error, request, fence, budget_ms)
                raise
            # A new order is inserted only once decided: another delivery of its id
            # inserted it meanwhile and this statement changed nothing. Run it
            # again, once: it now finds the row and follows flashsale_record's rules.
            logger.info("Order %r was recorded meanwhile; placing it again", request.order_id)
            if budget_ms is not None:
                params["budget"] = budget_ms - (time.monotonic() - started_s) * 1000
                if params["budget"] <= 0:
                    raise OverBudget(budget_ms) from None
            try:
                row = self._one_row(self._place_sql, params)
            except DBAPIError as again:
                _raise_domain_error(again, request, fence, budget_ms)
                raise
        if row.payload_hash != request.payload_hash:
            raise OrderConflict(request.order_id)
        state = OrderState(request.order_id, OrderStatus(row.status), row.reason, row.attempts)
        decisions = tuple(
            Decision(uuid.UUID(order_id), OrderStatus(status), reason, age)
            for order_id, status, reason, age in zip(
                row.decided_ids,
                row.decided_statuses,
                row.decided_reasons,
                row.decided_ages,
                strict=True,
            )
        )
        return StepResult(state, decisions)

    def end(self, request: OrderRequest, status: OrderStatus, reason: str) -> StepResult:
        """End the order unless decided (see `OrderStore.end`)."""
        with self._transaction() as session:
            return end_order(session, request, status, reason, record_pending)

    def reject_invalid(self, order_id: uuid.UUID, customer_id: object, reason: str) -> StepResult:
        """Store an invalid order as rejected (see `OrderStore.reject_invalid`)."""
        with self._transaction() as session:
            state, decision = record_rejected(
                session, postgresql.insert, order_id, customer_id, reason
            )
        return StepResult(state, () if decision is None else (decision,))

    def highest_fence(self, skus: Sequence[str]) -> int:
        """Return the highest fence that wrote the stock of any of ``skus`` (0 if none)."""
        with self._statement() as connection:
            return read_highest_fence(connection, skus)

    def known_skus(self, skus: Sequence[str]) -> frozenset[str]:
        """Return which of ``skus`` are products."""
        with self._statement() as connection:
            return read_known_skus(connection, skus)

    def _one_row(self, sql: str, params: dict[str, Any]) -> Any:
        """Run one statement on a pooled autocommit connection's own cursor; return its row.

        For the hot step SQLAlchemy's statement machinery (execution context,
        result) cost 0.1 ms of client CPU per order: 163 against 261 us per
        settlement step, medians of 5 interleaved rounds on a loaded host
        (``bench/statement_cpu.py``, results 2026-12-01-path-raw-cursor.json).
        Errors come out as SQLAlchemy raises them (`DBAPIError` with the driver's
        error as ``orig``, `DatabaseUnavailable` by `translated`), and a connection
        the driver reports lost is invalidated, not returned to the pool.

        :param sql: the statement in the driver's paramstyle (`driver_sql`).
        :param params: its parameters by name; UUIDs are sent as text.
        :raises NoResultFound, MultipleResultsFound: not exactly one row.
        """
        dialect = self._statements.dialect
        driver_error = dialect.loaded_dbapi.Error
        values = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in params.items()}
        with translated():
            try:
                connection = self._statements.raw_connection()
            except driver_error as error:
                lost = dialect.is_disconnect(error, None, None)
                raise DBAPIError.instance(
                    None, None, error, driver_error, connection_invalidated=lost, dialect=dialect
                ) from error
            try:
                cursor = connection.cursor()
                try:
                    cursor.execute(sql, values)
                    rows = cursor.fetchall()
                    names = tuple(column[0] for column in cursor.description)
                except driver_error as error:
                    lost = dialect.is_disconnect(error, connection.dbapi_connection, cursor)
                    if lost:
                        connection.invalidate(error)
                    raise DBAPIError.instance(
                        sql,
                        values,
                        error,
                        driver_error,
                        connection_invalidated=lost,
                        dialect=dialect,
                    ) from error
                finally:
                    if connection.is_valid:
                        cursor.close()
            finally:
                connection.close()
        if not rows:
            raise NoResultFound("No row was found when one was required")
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return _row_type(names)(*rows[0])

    @contextmanager
    def _statement(self) -> Iterator[Executor]:
        """An autocommit connection: each statement its own transaction."""
        with translated(), self._statements.connect() as connection:
            yield connection

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A session in one transaction."""
        with translated(), self._sessions.begin() as session:
            yield session


def _is_new_order_race(error: DBAPIError) -> bool:
    """Tell whether ``flashsale_place`` lost the race to insert a new order's row."""
    diag = getattr(error.orig, "diag", None)
    return (
        getattr(error.orig, "pgcode", None) == UNIQUE_VIOLATION_SQLSTATE
        and getattr(diag, "constraint_name", None) == ORDERS_PRIMARY_KEY
    )


def _raise_domain_error(
    error: DBAPIError, request: OrderRequest, fence: int | None, budget_ms: float | None
) -> None:
    """Raise the domain error of a failed ``flashsale_place``; return if it has none."""
    code = getattr(error.orig, "pgcode", None)
    if code == STALE_FENCE_SQLSTATE:
        raise StaleFence(",".join(request.skus), fence) from None
    if code == OVER_BUDGET_SQLSTATE and budget_ms is not None:
        raise OverBudget(budget_ms) from None


def record_pending(executor: Executor, request: OrderRequest) -> OrderState:
    """Record the order with ``flashsale_record`` (one statement).

    :raises OrderConflict: the id exists with a different customer or cart.
    """
    row = executor.execute(
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


def driver_sql(statement: TextClause, engine: Engine) -> str:
    """Return ``statement`` compiled once to the SQL ``engine``'s driver takes (named params)."""
    return str(statement.compile(dialect=engine.dialect))


_ROW_TYPES: dict[tuple[str, ...], Any] = {}


def _row_type(names: tuple[str, ...]) -> Any:
    """A named tuple type for rows with these column names (one per column list)."""
    found = _ROW_TYPES.get(names)
    if found is None:
        found = _ROW_TYPES[names] = namedtuple("Row", names)
    return found
