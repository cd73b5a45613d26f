"""The settlement's cost follows the pending orders, not the decided ones, without statistics.

Tables that were never ANALYZEd (every new database, and a new hot SKU until
autoanalyze) once made the candidate query of ``flashsale_settle`` read every
line of the SKU. These tests count the rows one settlement reads from the order
tables (the transaction's own statistics: deterministic, unlike a timing) as
decided orders of the SKU pile up, with autovacuum (and so autoanalyze) off.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine

from tasks.db import create_db_engine
from tests.sale import seed_products

#: One settlement of SKU A, as the store runs it (no fence: the guard is not measured).
SETTLE_A = "SELECT * FROM flashsale_settle(ARRAY['A'], NULL, NULL, 500, NULL, NULL)"
#: Decided orders of SKU A in the database.
DECIDED_ORDERS = 5000
#: Rows one settlement of one pending order may read from orders and order_items:
#: the order, its line twice (check, then apply) and the ledger's join, with room.
ROWS_ALLOWED = 20
#: What the transaction read from the order tables so far, by table.
ROWS_READ = (
    "SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
    " FROM pg_stat_xact_user_tables WHERE relname IN ('orders', 'order_items')"
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a migrated database whose order tables are never analyzed."""
    engine = create_db_engine(database_url)
    with engine.begin() as connection:
        for table in ("orders", "order_items"):
            connection.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    seed_products(engine, {"A": 10 * DECIDED_ORDERS, "B": 10})
    yield engine
    engine.dispose()


def add_orders(connection: Connection, count: int, status: str, sku: str = "A") -> None:
    """Insert ``count`` orders of one line of ``sku`` with ``status`` (one statement)."""
    connection.exec_driver_sql(
        "WITH o AS (INSERT INTO orders (id, customer_id, status, payload_hash, attempts)"
        " SELECT gen_random_uuid(), 'c', %(status)s, 'h', 1 FROM generate_series(1, %(count)s)"
        " RETURNING id)"
        " INSERT INTO order_items (order_id, sku, quantity) SELECT id, %(sku)s, 1 FROM o",
        {"status": status, "count": count, "sku": sku},
    )


def rows_read_by_one_settlement(engine: Engine) -> dict[str, int]:
    """Settle SKU A with one new pending order of it, roll back; return rows read by table."""
    with engine.connect() as connection, connection.begin() as transaction:
        add_orders(connection, 1, "pending")
        before = dict(tuple(row) for row in connection.exec_driver_sql(ROWS_READ))
        decided = connection.exec_driver_sql(SETTLE_A).all()
        after = dict(tuple(row) for row in connection.exec_driver_sql(ROWS_READ))
        transaction.rollback()
    assert len(decided) == 1
    return {table: after[table] - before.get(table, 0) for table in after}


def test_a_settlement_does_not_read_the_decided_orders_of_its_sku(engine: Engine) -> None:
    with engine.begin() as connection:
        add_orders(connection, DECIDED_ORDERS, "confirmed")
        add_orders(connection, DECIDED_ORDERS // 10, "rejected")
    read = rows_read_by_one_settlement(engine)
    assert sum(read.values()) <= ROWS_ALLOWED, read
