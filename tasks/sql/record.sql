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
