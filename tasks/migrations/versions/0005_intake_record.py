"""The intake record: status ``accepted``, publication columns, and workers that adopt it.

A web app stores an order with status ``accepted`` in its own transaction
(`tasks.intake`); the relay (`tasks.relay`) publishes what the broker never got.
``orders.published_at`` is when the order's message was last published (NULL:
never, or that publish failed), ``orders.delivered_at`` when a worker last took a
delivery of it, ``orders.republications`` how often the relay published it.

``flashsale_record`` (frozen in `tasks.migrations.functions_0005`) is replaced so
that a worker's first delivery turns an ``accepted`` row into ``pending`` (same
payload rules, no second row, its lines kept) and stamps ``delivered_at``; still
one statement.

Downgrading turns ``accepted`` orders into ``pending`` ones (older code has no
relay: their messages must be resent) and leaves the enum value in place
(PostgreSQL cannot drop one).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

from tasks.migrations import functions_0005

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


COLUMNS = (
    ("published_at", lambda: sa.Column("published_at", sa.DateTime(timezone=True))),
    (
        "delivered_at",
        lambda: sa.Column("delivered_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    ),
    (
        "republications",
        lambda: sa.Column("republications", sa.Integer(), nullable=False, server_default="0"),
    ),
)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        # A new enum value must be committed before a statement may use it.
        with op.get_context().autocommit_block():
            op.execute("ALTER TYPE order_status ADD VALUE IF NOT EXISTS 'accepted'")
    # SQLite cannot ADD COLUMN with a non-constant default: rebuild the table there.
    with op.batch_alter_table("orders", recreate="auto" if postgresql else "always") as batch:
        for _, column in COLUMNS:
            batch.add_column(column())
    if postgresql:
        op.execute(functions_0005.RECORD)


def downgrade() -> None:
    op.execute("UPDATE orders SET status = 'pending' WHERE status = 'accepted'")
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("orders", recreate="auto" if postgresql else "always") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
    if postgresql:
        # Revision 0004 deployed the same flashsale_record as 0003: restore that one.
        previous = importlib.import_module("tasks.migrations.versions.0003_place_function")
        op.execute(previous.RECORD)
