"""PostgreSQL functions that record and settle orders in one round trip each.

The SQL twins of `tasks.orders.record_pending` and `tasks.settlement.settle`
(which remain the implementation on SQLite). Same algorithm, same guards: the
order path then costs three round trips to PostgreSQL instead of eight, which is
what keeps a hot SKU's critical section short. Both paths run the same tests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RECORD = """
CREATE FUNCTION flashsale_record(
    p_id uuid, p_customer text, p_hash text, p_skus text[], p_quantities integer[]
) RETURNS TABLE (status order_status, reason text, payload_hash text, attempts integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    INSERT INTO orders AS o (id, customer_id, status, payload_hash, attempts)
    VALUES (p_id, p_customer, 'pending', p_hash, 1)
    ON CONFLICT (id) DO UPDATE SET attempts = o.attempts + 1
    RETURNING o.status, o.reason, o.payload_hash::text, o.attempts;
    -- Lines are written with the first delivery only; a replay or a conflicting
    -- payload never touches them.
    IF NOT EXISTS (SELECT 1 FROM order_items WHERE order_id = p_id) THEN
        INSERT INTO order_items (order_id, sku, quantity)
        SELECT p_id, line.sku, line.quantity
        FROM unnest(p_skus, p_quantities) AS line(sku, quantity)
        WHERE (SELECT o.payload_hash FROM orders o WHERE o.id = p_id) = p_hash;
    END IF;
END;
$$;
"""

# Raises SQLSTATE 'FS001' (stale fence) when a newer lease wrote one of the SKUs.
SETTLE = """
CREATE FUNCTION flashsale_settle(
    p_skus text[], p_fence bigint, p_limit integer, p_own uuid, p_wait_ms double precision
) RETURNS TABLE (order_id uuid, status order_status, reason text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_skus text[];
    v_stock integer[];
    v_total integer[];
    v_order uuid;
    v_line record;
    v_idx integer;
    v_status order_status;
    v_reason text;
    v_ids uuid[] := '{}';
    v_statuses order_status[] := '{}';
    v_reasons text[] := '{}';
    v_now timestamptz := now();
    v_updated integer;
BEGIN
    -- The oldest pending orders whose every line is in p_skus; rows locked by
    -- another transaction are skipped, not waited for.
    FOR v_order IN
        SELECT o.id FROM orders o
        WHERE o.status = 'pending'
          AND o.id IN (SELECT i.order_id FROM order_items i WHERE i.sku = ANY (p_skus))
          AND NOT EXISTS (
              SELECT 1 FROM order_items i WHERE i.order_id = o.id AND i.sku <> ALL (p_skus))
        ORDER BY o.created_at, o.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    LOOP
        IF v_skus IS NULL THEN
            -- Lock the products once, in a fixed order, and refuse a stale fence.
            SELECT coalesce(array_agg(p.sku ORDER BY p.sku), '{}'),
                   coalesce(array_agg(p.stock ORDER BY p.sku), '{}')
              INTO v_skus, v_stock
              FROM (SELECT p2.sku, p2.stock, p2.fence FROM products p2
                    WHERE p2.sku = ANY (p_skus) ORDER BY p2.sku FOR UPDATE) p;
            IF p_fence IS NOT NULL AND EXISTS (
                SELECT 1 FROM products p WHERE p.sku = ANY (p_skus) AND p.fence > p_fence) THEN
                RAISE EXCEPTION 'stock written by a newer lease than fence %', p_fence
                    USING ERRCODE = 'FS001';
            END IF;
            v_total := array_fill(0, ARRAY[greatest(cardinality(v_skus), 1)]);
        END IF;
        v_status := 'confirmed';
        v_reason := NULL;
        FOR v_line IN SELECT i.sku, i.quantity FROM order_items i WHERE i.order_id = v_order LOOP
            v_idx := array_position(v_skus, v_line.sku);
            IF v_idx IS NULL THEN
                v_status := 'rejected';
                v_reason := 'unknown_sku';
                EXIT;
            ELSIF v_stock[v_idx] < v_line.quantity THEN
                v_status := 'rejected';
                v_reason := 'insufficient_stock';
            END IF;
        END LOOP;
        IF v_status = 'confirmed' THEN
            FOR v_line IN
                SELECT i.sku, i.quantity FROM order_items i WHERE i.order_id = v_order
            LOOP
                v_idx := array_position(v_skus, v_line.sku);
                v_stock[v_idx] := v_stock[v_idx] - v_line.quantity;
                v_total[v_idx] := v_total[v_idx] + v_line.quantity;
            END LOOP;
        END IF;
        v_ids := v_ids || v_order;
        v_statuses := v_statuses || v_status;
        v_reasons := v_reasons || v_reason;
    END LOOP;
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    FOR v_idx IN 1 .. cardinality(v_skus) LOOP
        CONTINUE WHEN v_total[v_idx] = 0;
        UPDATE products p SET stock = p.stock - v_total[v_idx], fence = coalesce(p_fence, p.fence)
        WHERE p.sku = v_skus[v_idx] AND p.stock >= v_total[v_idx]
          AND (p_fence IS NULL OR p.fence <= p_fence);
        GET DIAGNOSTICS v_updated = ROW_COUNT;
        IF v_updated <> 1 THEN
            RAISE EXCEPTION 'stock of % written by a newer lease than fence %',
                v_skus[v_idx], p_fence USING ERRCODE = 'FS001';
        END IF;
    END LOOP;
    INSERT INTO stock_movements (order_id, sku, delta, fence)
    SELECT d.id, i.sku, -i.quantity, p_fence
    FROM unnest(v_ids, v_statuses) AS d(id, status)
    JOIN order_items i ON i.order_id = d.id
    WHERE d.status = 'confirmed';
    UPDATE orders o SET status = d.status, reason = d.reason, decided_at = v_now,
        lock_wait_ms = CASE WHEN o.id = p_own THEN p_wait_ms END
    FROM unnest(v_ids, v_statuses, v_reasons) AS d(id, status, reason)
    WHERE o.id = d.id AND o.status = 'pending';
    RETURN QUERY SELECT d.id, d.status, d.reason
        FROM unnest(v_ids, v_statuses, v_reasons) AS d(id, status, reason);
END;
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(RECORD)
    op.execute(SETTLE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "DROP FUNCTION IF EXISTS flashsale_settle(text[], bigint, integer, uuid, double precision)"
    )
    op.execute("DROP FUNCTION IF EXISTS flashsale_record(uuid, text, text, text[], integer[])")
