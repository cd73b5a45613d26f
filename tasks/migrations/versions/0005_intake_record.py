"""The intake record: status ``accepted``, publication columns, and workers that adopt it.

A web app stores an order with status ``accepted`` in its own transaction
(`tasks.intake`); the relay (`tasks.relay`) publishes what the broker never got.
``orders.published_at`` is when the order's message was last published (NULL:
never, or that publish failed), ``orders.delivered_at`` when a worker last took a
delivery of it, ``orders.republications`` how often the relay published it.

``flashsale_record`` is replaced so that a worker's first delivery turns an
``accepted`` row into ``pending`` (same payload rules, no second row, its lines
kept) and stamps ``delivered_at``; still one statement.

Downgrading turns ``accepted`` orders into ``pending`` ones (older code has no
relay: their messages must be resent) and leaves the enum value in place
(PostgreSQL cannot drop one).

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

RECORD = """
CREATE OR REPLACE FUNCTION flashsale_record(
    p_id uuid, p_customer text, p_hash text, p_skus text[], p_quantities integer[]
) RETURNS TABLE (status order_status, reason text, payload_hash text, attempts integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    INSERT INTO orders AS o (id, customer_id, status, payload_hash, attempts)
    VALUES (p_id, p_customer, 'pending', p_hash, 1)
    ON CONFLICT (id) DO UPDATE SET attempts = o.attempts + 1, delivered_at = now(),
        -- An order from the intake record: its first delivery makes it the worker's.
        status = CASE WHEN o.status = 'accepted' THEN 'pending'::order_status
                      ELSE o.status END
        WHERE o.payload_hash = p_hash
    RETURNING o.status, o.reason, o.payload_hash::text, o.attempts;
    IF NOT FOUND THEN
        -- The id is taken by another payload: report it, change nothing.
        RETURN QUERY SELECT o.status, o.reason, o.payload_hash::text, o.attempts
            FROM orders o WHERE o.id = p_id;
        RETURN;
    END IF;
    -- Lines are written with the first delivery only (or by the intake record);
    -- a replay never touches them.
    IF NOT EXISTS (SELECT 1 FROM order_items WHERE order_id = p_id) THEN
        INSERT INTO order_items (order_id, sku, quantity)
        SELECT p_id, line.sku, line.quantity
        FROM unnest(p_skus, p_quantities) AS line(sku, quantity);
    END IF;
END;
$$;
"""

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
        op.execute(RECORD)


def downgrade() -> None:
    op.execute("UPDATE orders SET status = 'pending' WHERE status = 'accepted'")
    postgresql = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("orders", recreate="auto" if postgresql else "always") as batch:
        for name, _ in COLUMNS:
            batch.drop_column(name)
    if postgresql:
        previous = importlib.import_module("tasks.migrations.versions.0003_place_function")
        op.execute(previous.RECORD)
