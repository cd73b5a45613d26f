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
