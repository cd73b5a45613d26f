"""PostgreSQL function that records and settles an order in one autocommitted statement.

``flashsale_place`` runs ``flashsale_record`` and ``flashsale_settle`` (migration
0002) as one statement. Sent in autocommit mode it is its own transaction, so
the uncontended order path costs one round trip to PostgreSQL instead of four
(BEGIN, record, settle, COMMIT). The lease check that used to run before COMMIT
runs inside the function: the caller passes the time its lease can still spare
(``p_budget_ms``) and the function refuses to commit when it ran longer.

``flashsale_record`` is replaced so that a delivery with another payload under a
known id counts nothing: in a transaction the caller used to roll that back;
in autocommit mode the statement itself must leave the order untouched.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0003"
down_revision = "0002"
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
    ON CONFLICT (id) DO UPDATE SET attempts = o.attempts + 1
        WHERE o.payload_hash = p_hash
    RETURNING o.status, o.reason, o.payload_hash::text, o.attempts;
    IF NOT FOUND THEN
        -- The id is taken by another payload: report it, change nothing.
        RETURN QUERY SELECT o.status, o.reason, o.payload_hash::text, o.attempts
            FROM orders o WHERE o.id = p_id;
        RETURN;
    END IF;
    -- Lines are written with the first delivery only; a replay never touches them.
    IF NOT EXISTS (SELECT 1 FROM order_items WHERE order_id = p_id) THEN
        INSERT INTO order_items (order_id, sku, quantity)
        SELECT p_id, line.sku, line.quantity
        FROM unnest(p_skus, p_quantities) AS line(sku, quantity);
    END IF;
END;
$$;
"""

# Raises SQLSTATE 'FS001' (stale fence, from flashsale_settle) and 'FS002' when the
# statement ran longer than p_budget_ms: the lease may lapse before the commit.
# Returns the order's state after settling and how many orders were settled.
PLACE = """
CREATE FUNCTION flashsale_place(
    p_id uuid, p_customer text, p_hash text, p_skus text[], p_quantities integer[],
    p_record boolean, p_fence bigint, p_limit integer, p_wait_ms double precision,
    p_budget_ms double precision, p_max_deliveries integer
) RETURNS TABLE (
    status order_status, reason text, payload_hash text, attempts integer, settled integer
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_order record;
    v_settled integer;
BEGIN
    IF p_record THEN
        SELECT * INTO v_order FROM flashsale_record(p_id, p_customer, p_hash, p_skus, p_quantities);
        IF v_order.payload_hash <> p_hash OR v_order.status <> 'pending' THEN
            RETURN QUERY SELECT v_order.status, v_order.reason, v_order.payload_hash,
                                v_order.attempts, 0;
            RETURN;
        END IF;
        IF v_order.attempts > p_max_deliveries THEN
            -- Redelivered again and again (a crash in its path): stop, visibly.
            UPDATE orders o SET status = 'failed', reason = 'too_many_attempts',
                decided_at = now()
            WHERE o.id = p_id AND o.status = 'pending';
            RETURN QUERY SELECT 'failed'::order_status, 'too_many_attempts', v_order.payload_hash,
                                v_order.attempts, 0;
            RETURN;
        END IF;
    END IF;
    -- An order's SKUs are distinct (validation refuses a repeated SKU).
    SELECT count(*) INTO v_settled
    FROM flashsale_settle(p_skus, p_fence, p_limit, p_id, p_wait_ms);
    IF p_budget_ms IS NOT NULL
       AND clock_timestamp() - statement_timestamp() > p_budget_ms * interval '1 millisecond' THEN
        RAISE EXCEPTION 'settlement ran longer than the % ms its lease could spare', p_budget_ms
            USING ERRCODE = 'FS002';
    END IF;
    RETURN QUERY SELECT o.status, o.reason, o.payload_hash::text, o.attempts, v_settled
        FROM orders o WHERE o.id = p_id;
END;
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(RECORD)
    op.execute(PLACE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS flashsale_place(uuid, text, text, text[], integer[], boolean,"
        " bigint, integer, double precision, double precision, integer)"
    )
    # Back to revision 0002's flashsale_record.
    previous = importlib.import_module("tasks.migrations.versions.0002_settle_functions")
    op.execute(previous.RECORD.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
