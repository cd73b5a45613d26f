"""Partial indexes of the open orders; settlement driven from the pending ones; one write per order.

Decided orders are almost every row of ``orders``, and no query looks for them
by status: the settlement wants the pending ones oldest first, the relay the
accepted ones, the exporter both. ``ix_orders_status`` (every row) makes way for
two partial indexes that a decided order leaves: ``ix_orders_pending``
(created_at, id) and ``ix_orders_accepted`` (created_at).

``flashsale_settle`` (living source: ``tasks/sql/settle.sql``) now walks the
pending orders in that index's order and checks each one's lines by its primary
key. Its candidate query used to join the pending orders to every line of the
SKUs; on tables never ANALYZEd (a new database, or a new hot SKU until
autoanalyze) the planner drove that join from the lines: 1.4-11 ms with 5,000
decided orders of one SKU against 0.06 ms once analyzed. The new form has no
plan that reads decided orders, statistics or not.

``flashsale_place`` writes the own order's row once on the uncontended path: a
new order is inserted with its decision (it was inserted ``pending`` and
updated in the same statement: two heap tuples and two sets of index entries),
an ``accepted`` one goes to its decision in one update (it took two). To decide
an order before its row exists, ``flashsale_settle`` takes two more arguments,
the own order's quantities and creation time (defaulted: the six-argument calls
still work), and the six-argument function is dropped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tasks import sql
from tasks.migrations import functions_0005

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: Revision 0004's flashsale_settle, which the new one (two more arguments) replaces.
SETTLE_0004 = "flashsale_settle(text[], bigint, text, integer, uuid, double precision)"
SETTLE_0006 = (
    "flashsale_settle(text[], bigint, text, integer, uuid, double precision, integer[],"
    " timestamp with time zone)"
)
#: Index name -> (columns, the status its rows have).
PARTIAL_INDEXES = {
    "ix_orders_pending": (["created_at", "id"], "pending"),
    "ix_orders_accepted": (["created_at"], "accepted"),
}


def upgrade() -> None:
    for name, (columns, status) in PARTIAL_INDEXES.items():
        where = sa.text(f"status = '{status}'")
        op.create_index(name, "orders", columns, postgresql_where=where, sqlite_where=where)
    op.drop_index("ix_orders_status", table_name="orders")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SETTLE_0004}")
        for function in sql.FUNCTIONS:
            op.execute(sql.source(function))


def downgrade() -> None:
    op.create_index("ix_orders_status", "orders", ["status"])
    for name in PARTIAL_INDEXES:
        op.drop_index(name, table_name="orders")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS {SETTLE_0006}")
        for source in functions_0005.FUNCTIONS:
            op.execute(source)
