"""The PostgreSQL functions as revisions 0004 and 0005 deployed them, frozen.

Revision 0006 changes their living source (``tasks/sql``); its downgrade puts
these texts back. Never edit them: they are what a database at 0005 runs.
"""

from __future__ import annotations

#: flashsale_record of revision 0005.
RECORD = """
-- flashsale_record: record an order as pending, or count one more delivery of it.
-- A delivery with another payload under a known id changes nothing and reports
-- the stored order (the caller compares payload hashes). An order stored by the
-- intake record (status 'accepted') becomes 'pending' at its first delivery;
-- every delivery stamps delivered_at (the relay leaves a delivered order alone).
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

#: flashsale_settle of revision 0004.
SETTLE = """
-- flashsale_settle: decide up to p_limit pending orders whose every line is in
-- p_skus, oldest first, all-or-nothing per order (flat combining).
-- Fence guard: a product written by a newer fence, or by ANOTHER lease with the
-- same fence (p_token_digest differs), raises SQLSTATE 'FS001' and nothing changes.
-- Returns every order it decided, with its status, reason and age in seconds
-- (0 for an order created after this transaction began).
CREATE OR REPLACE FUNCTION flashsale_settle(
    p_skus text[], p_fence bigint, p_token_digest text, p_limit integer, p_own uuid,
    p_wait_ms double precision
) RETURNS TABLE (order_id uuid, status order_status, reason text, age_s double precision)
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
                SELECT 1 FROM products p WHERE p.sku = ANY (p_skus)
                  AND (p.fence > p_fence
                       OR (p.fence = p_fence AND p.fence_token IS DISTINCT FROM p_token_digest)))
            THEN
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
        UPDATE products p SET stock = p.stock - v_total[v_idx],
            fence = coalesce(p_fence, p.fence),
            fence_token = CASE WHEN p_fence IS NULL THEN p.fence_token ELSE p_token_digest END
        WHERE p.sku = v_skus[v_idx] AND p.stock >= v_total[v_idx]
          AND (p_fence IS NULL OR p.fence < p_fence
               OR (p.fence = p_fence AND p.fence_token IS NOT DISTINCT FROM p_token_digest));
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
    RETURN QUERY
    UPDATE orders o SET status = d.status, reason = d.reason, decided_at = v_now,
        lock_wait_ms = CASE WHEN o.id = p_own THEN p_wait_ms END
    FROM unnest(v_ids, v_statuses, v_reasons) AS d(id, status, reason)
    WHERE o.id = d.id AND o.status = 'pending'
    RETURNING o.id, o.status, o.reason,
        greatest(extract(epoch FROM v_now - o.created_at)::float8, 0.0);
END;
$$;
"""

#: flashsale_place of revision 0004.
PLACE = """
-- flashsale_place: record (if p_record) and settle one order in one statement.
-- Sent in autocommit mode it is its own transaction: one round trip per step.
-- Raises SQLSTATE 'FS001' (stale fence, from flashsale_settle) and 'FS002' when
-- the statement ran longer than p_budget_ms: the lease may lapse before the commit.
-- Returns the order's state after the step and every order the step decided
-- (ids, statuses and reasons as text, ages in seconds), in four arrays.
CREATE OR REPLACE FUNCTION flashsale_place(
    p_id uuid, p_customer text, p_hash text, p_skus text[], p_quantities integer[],
    p_record boolean, p_fence bigint, p_token_digest text, p_limit integer,
    p_wait_ms double precision, p_budget_ms double precision, p_max_deliveries integer
) RETURNS TABLE (
    status order_status, reason text, payload_hash text, attempts integer,
    decided_ids text[], decided_statuses text[], decided_reasons text[],
    decided_ages double precision[]
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_order record;
    v_ids text[];
    v_statuses text[];
    v_reasons text[];
    v_ages double precision[];
BEGIN
    IF p_record THEN
        SELECT * INTO v_order FROM flashsale_record(p_id, p_customer, p_hash, p_skus, p_quantities);
        IF v_order.payload_hash <> p_hash OR v_order.status <> 'pending' THEN
            RETURN QUERY SELECT v_order.status, v_order.reason, v_order.payload_hash,
                                v_order.attempts, '{}'::text[], '{}'::text[], '{}'::text[],
                                '{}'::double precision[];
            RETURN;
        END IF;
        IF v_order.attempts > p_max_deliveries THEN
            -- Redelivered again and again (a crash in its path): stop, visibly.
            RETURN QUERY
            UPDATE orders o SET status = 'failed', reason = 'too_many_attempts',
                decided_at = now()
            WHERE o.id = p_id AND o.status = 'pending'
            RETURNING o.status, o.reason, o.payload_hash::text, o.attempts,
                ARRAY[o.id::text], ARRAY['failed'], ARRAY['too_many_attempts'],
                ARRAY[greatest(extract(epoch FROM now() - o.created_at)::float8, 0.0)];
            RETURN;
        END IF;
    END IF;
    -- An order's SKUs are distinct (validation refuses a repeated SKU).
    SELECT coalesce(array_agg(s.order_id::text), '{}'), coalesce(array_agg(s.status::text), '{}'),
           coalesce(array_agg(s.reason), '{}'), coalesce(array_agg(s.age_s), '{}')
      INTO v_ids, v_statuses, v_reasons, v_ages
      FROM flashsale_settle(p_skus, p_fence, p_token_digest, p_limit, p_id, p_wait_ms) s;
    IF p_budget_ms IS NOT NULL
       AND clock_timestamp() - statement_timestamp() > p_budget_ms * interval '1 millisecond' THEN
        RAISE EXCEPTION 'settlement ran longer than the % ms its lease could spare', p_budget_ms
            USING ERRCODE = 'FS002';
    END IF;
    RETURN QUERY SELECT o.status, o.reason, o.payload_hash::text, o.attempts,
                        v_ids, v_statuses, v_reasons, v_ages
        FROM orders o WHERE o.id = p_id;
END;
$$;
"""

#: In creation order (flashsale_place calls the others).
FUNCTIONS = (RECORD, SETTLE, PLACE)
