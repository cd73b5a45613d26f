-- flashsale_place: record (if p_record) and settle one order in one statement.
-- Sent in autocommit mode it is its own transaction: one round trip per step.
-- Raises SQLSTATE 'FS001' (stale fence, from flashsale_settle) and 'FS002' when
-- the statement ran longer than p_budget_ms: the lease may lapse before the commit.
-- With p_record the order's row is written once, with its decision: a new order
-- is inserted decided (or pending when it is past the batch), an accepted or
-- pending one is updated once; flashsale_record's rules hold (a redelivery is
-- counted, another payload under the id changes nothing, every delivery stamps
-- delivered_at). A new order inserted meanwhile by another transaction raises
-- unique_violation on orders_pkey and nothing changes: run the statement again.
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
    v_found boolean := false;
    v_attempts integer := 1;
    v_created_at timestamptz := now();
    v_status order_status := 'pending';
    v_reason text;
    v_ids text[];
    v_statuses text[];
    v_reasons text[];
    v_ages double precision[];
    v_own integer;
    v_wait_ms double precision;
BEGIN
    IF p_record THEN
        SELECT o.status, o.reason, o.payload_hash, o.attempts, o.created_at INTO v_order
            FROM orders o WHERE o.id = p_id FOR UPDATE;
        v_found := FOUND;
        IF v_found THEN
            IF v_order.payload_hash <> p_hash THEN
                -- The id is taken by another payload: report it, change nothing.
                RETURN QUERY SELECT v_order.status, v_order.reason, v_order.payload_hash::text,
                                    v_order.attempts, '{}'::text[], '{}'::text[],
                                    '{}'::text[], '{}'::double precision[];
                RETURN;
            END IF;
            -- Lines are written with the first delivery only (or by the intake
            -- record); a replay never touches them.
            IF NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = p_id) THEN
                INSERT INTO order_items (order_id, sku, quantity)
                SELECT p_id, line.sku, line.quantity
                FROM unnest(p_skus, p_quantities) AS line(sku, quantity);
            END IF;
            IF v_order.status NOT IN ('accepted', 'pending') THEN
                RETURN QUERY
                UPDATE orders o SET attempts = o.attempts + 1, delivered_at = now()
                WHERE o.id = p_id
                RETURNING o.status, o.reason, o.payload_hash::text, o.attempts,
                    '{}'::text[], '{}'::text[], '{}'::text[], '{}'::double precision[];
                RETURN;
            END IF;
            v_attempts := v_order.attempts + 1;
            v_created_at := v_order.created_at;
        END IF;
    END IF;
    IF p_record AND v_attempts > p_max_deliveries THEN
        -- Redelivered again and again (a crash in its path): stop, visibly.
        v_status := 'failed';
        v_reason := 'too_many_attempts';
        v_ids := ARRAY[p_id::text];
        v_statuses := ARRAY['failed'];
        v_reasons := ARRAY['too_many_attempts'];
        v_ages := ARRAY[greatest(extract(epoch FROM now() - v_created_at)::float8, 0.0)];
    ELSE
        -- An order's SKUs are distinct (validation refuses a repeated SKU).
        SELECT coalesce(array_agg(s.order_id::text), '{}'),
               coalesce(array_agg(s.status::text), '{}'),
               coalesce(array_agg(s.reason), '{}'), coalesce(array_agg(s.age_s), '{}')
          INTO v_ids, v_statuses, v_reasons, v_ages
          FROM flashsale_settle(p_skus, p_fence, p_token_digest, p_limit, p_id, p_wait_ms,
                                CASE WHEN p_record THEN p_quantities END,
                                CASE WHEN p_record THEN v_created_at END) s;
        v_own := array_position(v_ids, p_id::text);
        IF p_record AND v_own IS NOT NULL THEN
            v_status := v_statuses[v_own]::order_status;
            v_reason := v_reasons[v_own];
            v_wait_ms := p_wait_ms;
        END IF;
    END IF;
    IF p_record THEN
        -- The own order's one write: its row, at its decision (or still pending).
        IF v_found THEN
            UPDATE orders o SET status = v_status, reason = v_reason, attempts = v_attempts,
                delivered_at = now(),
                decided_at = CASE WHEN v_status = 'pending' THEN o.decided_at ELSE now() END,
                lock_wait_ms = coalesce(v_wait_ms, o.lock_wait_ms)
            WHERE o.id = p_id;
        ELSE
            INSERT INTO orders (id, customer_id, status, reason, payload_hash, attempts,
                                lock_wait_ms, created_at, decided_at)
            VALUES (p_id, p_customer, v_status, v_reason, p_hash, 1,
                    v_wait_ms, v_created_at,
                    CASE WHEN v_status = 'pending' THEN NULL ELSE now() END);
            INSERT INTO order_items (order_id, sku, quantity)
            SELECT p_id, line.sku, line.quantity
            FROM unnest(p_skus, p_quantities) AS line(sku, quantity);
        END IF;
        IF v_status = 'confirmed' THEN
            INSERT INTO stock_movements (order_id, sku, delta, fence)
            SELECT p_id, line.sku, -line.quantity, p_fence
            FROM unnest(p_skus, p_quantities) AS line(sku, quantity);
        END IF;
    END IF;
    IF p_budget_ms IS NOT NULL
       AND clock_timestamp() - statement_timestamp() > p_budget_ms * interval '1 millisecond' THEN
        RAISE EXCEPTION 'settlement ran longer than the % ms its lease could spare', p_budget_ms
            USING ERRCODE = 'FS002';
    END IF;
    IF p_record THEN
        RETURN QUERY SELECT v_status, v_reason, p_hash, v_attempts,
                            v_ids, v_statuses, v_reasons, v_ages;
        RETURN;
    END IF;
    RETURN QUERY SELECT o.status, o.reason, o.payload_hash::text, o.attempts,
                        v_ids, v_statuses, v_reasons, v_ages
        FROM orders o WHERE o.id = p_id;
END;
$$;
