"""Helpers shared by the domain and end-to-end tests: build order payloads, read orders back.

Everything reads the database directly (no product code in between), so the tests
check what is stored, not what a function says it stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Uuid, bindparam, inspect, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from tasks.db import create_db_engine
from tasks.errors import StaleFence
from tasks.migrate import alembic_config, upgrade
from tasks.models import Order, OrderItem, OrderStatus, Product, StockMovement
from tasks.orders import Executor, OrderState
from tasks.pg_store import STALE_FENCE_SQLSTATE
from tasks.pg_store import record_pending as record_on_postgresql
from tasks.settlement import BATCH_LIMIT, Fencing, settle
from tasks.sqlite_store import record_pending as record_on_sqlite
from tasks.store import token_digest
from tasks.validation import OrderRequest, parse_order

#: flashsale_settle of tasks/sql/settle.sql, called directly (the store calls it
#: through flashsale_place).
SETTLE_FUNCTION = text(
    "SELECT order_id, status, reason, age_s"
    " FROM flashsale_settle(:skus, :fence, :token, :limit, :own, :wait)"
).bindparams(bindparam("own", type_=Uuid))
#: The lease token `settle_now` writes with unless told otherwise.
TEST_LEASE_TOKEN = "test-lease"


def migrated_database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """Return a fresh, migrated database: the test's PostgreSQL one, or a new SQLite file.

    :param backend: ``postgresql`` or ``sqlite``.
    """
    if backend == "postgresql":
        return str(request.getfixturevalue("database_url"))
    url = f"sqlite:///{tmp_path / 'orders.sqlite3'}"
    upgrade(url)
    return url


def payload(
    items: Mapping[str, int] | None = None,
    *,
    customer: str = "c1",
    order_id: str | None = None,
) -> dict[str, Any]:
    """Return valid ``tasks.place_order`` kwargs: ``items`` maps SKU -> quantity."""
    lines = {"A": 1} if items is None else items
    return {
        "order_id": order_id or str(uuid.uuid4()),
        "customer_id": customer,
        "items": [{"sku": sku, "quantity": quantity} for sku, quantity in lines.items()],
    }


def request(items: Mapping[str, int] | None = None, **kwargs: Any) -> OrderRequest:
    """Return the validated `OrderRequest` of `payload` (same arguments)."""
    return parse_order(payload(items, **kwargs))


def record(
    sessions: sessionmaker[Session], items: Mapping[str, int] | None = None, **kwargs: Any
) -> OrderRequest:
    """Record a pending order (`request` arguments) in its own transaction."""
    order = request(items, **kwargs)
    with sessions.begin() as session:
        record_pending(session, order)
    return order


def record_pending(session: Executor, order: OrderRequest) -> OrderState:
    """Record ``order`` as the database's store does (function or upsert)."""
    if _is_postgresql(session):
        return record_on_postgresql(session, order)
    assert isinstance(session, Session)
    return record_on_sqlite(session, order)


Decided = dict[uuid.UUID, tuple[OrderStatus, str | None]]


def settle_now(
    sessions: sessionmaker[Session],
    skus: list[str],
    *,
    fence: int | None = None,
    token: str = TEST_LEASE_TOKEN,
    limit: int = BATCH_LIMIT,
    own_order_id: uuid.UUID | None = None,
    own_lock_wait_ms: float | None = None,
    before_commit: Callable[[], None] = lambda: None,
) -> Decided:
    """Run the settlement rules of the database over ``skus`` in one committed transaction.

    PostgreSQL runs ``flashsale_settle``, SQLite `tasks.settlement.settle`. Returns
    order id -> (status, reason) of what was decided.
    """
    with sessions.begin() as session:
        if not _is_postgresql(session):
            fencing = None if fence is None else Fencing(fence, token_digest(token) or "")
            decisions = settle(
                session,
                skus=skus,
                fencing=fencing,
                before_commit=before_commit,
                own_order_id=own_order_id,
                own_lock_wait_ms=own_lock_wait_ms,
                limit=limit,
            )
            return {d.order_id: (d.status, d.reason) for d in decisions}
        params = {
            "skus": list(skus),
            "fence": fence,
            "token": None if fence is None else token_digest(token),
            "limit": limit,
            "own": own_order_id,
            "wait": own_lock_wait_ms,
        }
        try:
            rows = session.execute(SETTLE_FUNCTION, params).all()
        except DBAPIError as error:
            if getattr(error.orig, "pgcode", None) == STALE_FENCE_SQLSTATE:
                raise StaleFence(",".join(skus), fence) from None
            raise
        before_commit()
        return {row.order_id: (OrderStatus(row.status), row.reason) for row in rows}


def _is_postgresql(session: Executor) -> bool:
    bind = session.get_bind() if isinstance(session, Session) else session
    return bind.dialect.name == "postgresql"


@dataclass(frozen=True)
class OrderRow:
    """An order as stored."""

    status: str
    reason: str | None
    attempts: int
    customer_id: str
    lock_wait_ms: float | None


def order_row(engine: Engine, order_id: str | uuid.UUID) -> OrderRow | None:
    """Return the stored order, or None when there is no row for ``order_id``."""
    key = order_id if isinstance(order_id, uuid.UUID) else uuid.UUID(order_id)
    with engine.connect() as connection:
        row = connection.execute(
            select(
                Order.status, Order.reason, Order.attempts, Order.customer_id, Order.lock_wait_ms
            ).where(Order.id == key)
        ).one_or_none()
    if row is None:
        return None
    return OrderRow(
        str(row.status.value), row.reason, row.attempts, row.customer_id, row.lock_wait_ms
    )


def status(engine: Engine, order_id: str | uuid.UUID) -> str:
    """Return the stored status of an order, or ``"missing"`` when it has no row."""
    row = order_row(engine, order_id)
    return "missing" if row is None else row.status


def order_count(engine: Engine) -> int:
    """Return how many orders are stored."""
    with engine.connect() as connection:
        return len(connection.execute(select(Order.id)).all())


def stock(engine: Engine) -> dict[str, int]:
    """Return SKU -> current stock."""
    with engine.connect() as connection:
        return dict(connection.execute(select(Product.sku, Product.stock)).all())


def fences(engine: Engine) -> dict[str, int]:
    """Return SKU -> the fence stored on the product."""
    with engine.connect() as connection:
        return dict(connection.execute(select(Product.sku, Product.fence)).all())


def movements(engine: Engine, order_id: str | uuid.UUID | None = None) -> list[tuple[str, int]]:
    """Return the ledger's (SKU, delta) rows, of one order or of all, sorted."""
    statement = select(StockMovement.sku, StockMovement.delta)
    if order_id is not None:
        key = order_id if isinstance(order_id, uuid.UUID) else uuid.UUID(order_id)
        statement = statement.where(StockMovement.order_id == key)
    with engine.connect() as connection:
        return sorted((sku, delta) for sku, delta in connection.execute(statement).all())


def cart(engine: Engine, order_id: str | uuid.UUID) -> dict[str, int]:
    """Return the stored cart of an order: SKU -> quantity."""
    key = order_id if isinstance(order_id, uuid.UUID) else uuid.UUID(order_id)
    with engine.connect() as connection:
        rows = connection.execute(
            select(OrderItem.sku, OrderItem.quantity).where(OrderItem.order_id == key)
        ).all()
    return dict(rows)


def head_revision() -> str:
    """Return the newest Alembic revision of the project's migrations."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


#: The tables of the order domain.
TABLES = frozenset({"products", "orders", "order_items", "stock_movements"})


def schema(url: str) -> tuple[frozenset[str], str | None]:
    """Return the domain tables present at ``url`` and the Alembic revision stored there."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
            version = None
            if "alembic_version" in names:
                version = connection.exec_driver_sql(
                    "SELECT version_num FROM alembic_version"
                ).scalar()
    finally:
        engine.dispose()
    return TABLES & names, version
