-- flashsale_settle: decide up to p_limit pending orders whose every line is in
-- p_skus, oldest first, all-or-nothing per order (flat combining).
-- Fence guard: a product written by a newer fence, or by ANOTHER lease with the
-- same fence (p_token_digest differs), raises SQLSTATE 'FS001' and nothing changes.
-- The own order p_own is either a pending row like the others, or, when
-- p_own_created_at is given, one that flashsale_place writes itself once it is
-- decided (new, or accepted, or its own locked row): its lines are p_skus and
-- p_own_quantities, it takes its turn by (p_own_created_at, p_own), and this
-- function neither updates its row nor writes its ledger lines.
-- Returns every order it decided, with its status, reason and age in seconds
-- (0 for an order created after this transaction began).
CREATE OR REPLACE FUNCTION flashsale_settle(
    p_skus text[], p_fence bigint, p_token_digest text, p_limit integer, p_own uuid,
    p_wait_ms double precision, p_own_quantities integer[] DEFAULT NULL,
    p_own_created_at timestamptz DEFAULT NULL
) RETURNS TABLE (order_id uuid, status order_status, reason text, age_s double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_skus text[];
    v_stock integer[];
    v_total integer[];
    v_order uuid;
    v_line_skus text[];
    v_line_quantities integer[];
    v_line integer;
    v_idx integer;
    v_status order_status;
    v_reason text;
    v_ids uuid[] := '{}';
    v_statuses order_status[] := '{}';
    v_reasons text[] := '{}';
    v_now timestamptz := now();
    v_updated integer;
    v_virtual boolean := p_own_created_at IS NOT NULL;
    v_own_status order_status;
    v_own_reason text;
BEGIN
    -- The oldest pending orders whose every line is in p_skus (bool_and of no
    -- lines is NULL: an order without lines is not one); rows locked by another
    -- transaction are skipped, not waited for. Driven from ix_orders_pending,
    -- each order's lines read by its key: the scalar subquery cannot become a
    -- join, so no plan reads decided orders, even on tables never ANALYZEd
    -- (the join it replaces read every line of the SKU there; migration 0006).
    -- The own order written by the caller joins them in its turn.
    FOR v_order IN
        WITH pending AS (
            SELECT o.id, o.created_at FROM orders o
            WHERE o.status = 'pending'
              AND (SELECT bool_and(i.sku = ANY (p_skus)) FROM order_items i
                   WHERE i.order_id = o.id)
              AND (NOT v_virtual OR o.id <> p_own)
            ORDER BY o.created_at, o.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        )
        SELECT c.id FROM (
            SELECT pending.id, pending.created_at FROM pending
            UNION ALL
            SELECT p_own, p_own_created_at WHERE v_virtual
        ) c
        ORDER BY c.created_at, c.id
        LIMIT p_limit
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
        IF v_virtual AND v_order = p_own THEN
            v_line_skus := p_skus;
            v_line_quantities := p_own_quantities;
        ELSE
            SELECT array_agg(i.sku), array_agg(i.quantity)
              INTO v_line_skus, v_line_quantities
              FROM order_items i WHERE i.order_id = v_order;
        END IF;
        v_status := 'confirmed';
        v_reason := NULL;
        FOR v_line IN 1 .. cardinality(v_line_skus) LOOP
            v_idx := array_position(v_skus, v_line_skus[v_line]);
            IF v_idx IS NULL THEN
                v_status := 'rejected';
                v_reason := 'unknown_sku';
                EXIT;
            ELSIF v_stock[v_idx] < v_line_quantities[v_line] THEN
                v_status := 'rejected';
                v_reason := 'insufficient_stock';
            END IF;
        END LOOP;
        IF v_status = 'confirmed' THEN
            FOR v_line IN 1 .. cardinality(v_line_skus) LOOP
                v_idx := array_position(v_skus, v_line_skus[v_line]);
                v_stock[v_idx] := v_stock[v_idx] - v_line_quantities[v_line];
                v_total[v_idx] := v_total[v_idx] + v_line_quantities[v_line];
            END LOOP;
        END IF;
        IF v_virtual AND v_order = p_own THEN
            v_own_status := v_status;
            v_own_reason := v_reason;
        ELSE
            v_ids := v_ids || v_order;
            v_statuses := v_statuses || v_status;
            v_reasons := v_reasons || v_reason;
        END IF;
    END LOOP;
    IF cardinality(v_ids) = 0 AND v_own_status IS NULL THEN
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
    IF cardinality(v_ids) > 0 THEN
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
    END IF;
    IF v_own_status IS NOT NULL THEN
        RETURN QUERY SELECT p_own, v_own_status, v_own_reason,
            greatest(extract(epoch FROM v_now - p_own_created_at)::float8, 0.0);
    END IF;
END;
$$;
