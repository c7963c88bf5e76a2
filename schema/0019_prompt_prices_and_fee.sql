-- Buyers pay for their prompts, and the platform takes a fee (#26 part 3). A session records the two prices it
-- was sold at (fixed at admission: the completion price keeps its column, price_per_token_far) and the fee:
--   total_cost_far = billed prompt tokens x prompt_price_per_token_far + tokens_generated x price_per_token_far,
--     where the prompt is billed once a token was generated (a session that generated none costs nothing);
--   platform_fee_far = total_cost_far x platform_fee_bps / 10,000, rounded down to 18 decimals;
--   sum(payment_far) + platform_fee_far + platform_remainder_far (+ sum(far_slashes.amount_far)) = total_cost_far.
-- Sessions stored before this have prompt price 0 and fee 0, so they keep balancing as they did. Every check
-- that held payments + remainder to the cost now counts the fee as well.

ALTER TABLE far_mesh_sessions
    ADD COLUMN prompt_price_per_token_far NUMERIC(38,18) NOT NULL DEFAULT 0 CHECK (prompt_price_per_token_far >= 0),
    ADD COLUMN platform_fee_bps INTEGER NOT NULL DEFAULT 0 CHECK (platform_fee_bps BETWEEN 0 AND 10000),
    ADD COLUMN platform_fee_far NUMERIC(38,18) NOT NULL DEFAULT 0 CHECK (platform_fee_far >= 0),
    DROP CONSTRAINT far_mesh_sessions_cost_is_tokens_times_price,
    ADD CONSTRAINT far_mesh_sessions_cost_is_tokens_times_prices CHECK (
        total_cost_far = CASE WHEN tokens_generated > 0 THEN prompt_tokens * prompt_price_per_token_far ELSE 0 END
                         + tokens_generated * price_per_token_far),
    -- x 0.0001 rather than / 10000: numeric multiplication is exact, division rounds at a scale of its choosing
    ADD CONSTRAINT far_mesh_sessions_fee_is_bps_of_cost CHECK (
        platform_fee_far = trunc(total_cost_far * platform_fee_bps * 0.0001, 18)),
    DROP CONSTRAINT far_mesh_sessions_remainder_within_cost,
    ADD CONSTRAINT far_mesh_sessions_fee_and_remainder_within_cost CHECK (
        platform_fee_far + platform_remainder_far <= total_cost_far);

CREATE OR REPLACE FUNCTION far_check_payments_within_cost() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
BEGIN
    SELECT s.request_id, s.total_cost_far, s.platform_fee_far, s.platform_remainder_far, p.paid
      INTO offender
      FROM (SELECT DISTINCT session_id FROM changed_rows) t
      JOIN far_mesh_sessions s ON s.id = t.session_id
     CROSS JOIN LATERAL (SELECT sum(c.payment_far) AS paid FROM far_session_contributions c
                          WHERE c.session_id = t.session_id) p
     WHERE p.paid + s.platform_fee_far + s.platform_remainder_far > s.total_cost_far
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'payments % + fee % + remainder % exceed total_cost_far % of session %',
            offender.paid, offender.platform_fee_far, offender.platform_remainder_far, offender.total_cost_far,
            offender.request_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION far_check_inserted_contributions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
    missing TEXT;
BEGIN
    SELECT t.session_id, s.id IS NULL AS absent, s.request_id, s.total_cost_far,
           s.platform_fee_far + s.platform_remainder_far AS platform_far, s.finalized_at, p.paid
      INTO offender
      FROM (SELECT DISTINCT session_id FROM changed_rows) t
      LEFT JOIN LATERAL (SELECT * FROM far_mesh_sessions s WHERE s.id = t.session_id FOR KEY SHARE) s ON true
     CROSS JOIN LATERAL (SELECT sum(c.payment_far) AS paid FROM far_session_contributions c
                          WHERE c.session_id = t.session_id) p
     WHERE s.id IS NULL
        OR p.paid + s.platform_fee_far + s.platform_remainder_far > s.total_cost_far
        OR (s.finalized_at IS NOT NULL AND p.paid + s.platform_fee_far + s.platform_remainder_far <> s.total_cost_far)
     LIMIT 1;
    IF FOUND AND offender.absent THEN
        RAISE EXCEPTION 'a contribution refers to session %, which is not in the ledger', offender.session_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND AND offender.paid + offender.platform_far > offender.total_cost_far THEN
        RAISE EXCEPTION 'payments % + fee and remainder % exceed total_cost_far % of session %',
            offender.paid, offender.platform_far, offender.total_cost_far, offender.request_id
            USING ERRCODE = 'check_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'session % does not balance: payments % + fee and remainder % <> total_cost_far %',
            offender.request_id, offender.paid, offender.platform_far, offender.total_cost_far
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT 'node ' || t.node_id INTO missing
      FROM (SELECT DISTINCT node_id FROM changed_rows) t
     WHERE NOT EXISTS (SELECT 1 FROM far_nodes n WHERE n.node_id = t.node_id FOR KEY SHARE)
     LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'a contribution refers to %, which is not in the ledger', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION far_finalize_sessions(session_ids UUID[]) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
    finalized INTEGER;
BEGIN
    SELECT s.request_id, s.total_cost_far, s.platform_fee_far, s.platform_remainder_far,
           coalesce(sum(c.payment_far), 0) AS paid
      INTO offender
      FROM far_mesh_sessions s
      LEFT JOIN far_session_contributions c ON c.session_id = s.id
     WHERE s.id = ANY (session_ids)
     GROUP BY s.id
    HAVING coalesce(sum(c.payment_far), 0) + s.platform_fee_far + s.platform_remainder_far <> s.total_cost_far
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'session % does not balance: payments % + fee % + remainder % <> total_cost_far %',
            offender.request_id, offender.paid, offender.platform_fee_far, offender.platform_remainder_far,
            offender.total_cost_far
            USING ERRCODE = 'check_violation';
    END IF;
    UPDATE far_mesh_sessions SET finalized_at = now() WHERE id = ANY (session_ids) AND finalized_at IS NULL;
    GET DIAGNOSTICS finalized = ROW_COUNT;
    RETURN finalized;
END
$$;

-- Per session, where its cost went; `balanced` must be true for every session, slashed or not. The fee is the
-- view's last column (a replaced view may only add columns at its end).
CREATE OR REPLACE VIEW far_session_balance AS
SELECT s.id AS session_id,
       s.request_id,
       s.total_cost_far,
       coalesce(p.paid, 0)::NUMERIC(38,18) AS payments_far,
       s.platform_remainder_far,
       coalesce(x.slashed, 0)::NUMERIC(38,18) AS slashed_far,
       coalesce(p.paid, 0) + s.platform_fee_far + s.platform_remainder_far + coalesce(x.slashed, 0) = s.total_cost_far
           AS balanced,
       s.platform_fee_far
  FROM far_mesh_sessions s
  LEFT JOIN LATERAL (SELECT sum(c.payment_far) AS paid FROM far_session_contributions c
                      WHERE c.session_id = s.id) p ON true
  LEFT JOIN LATERAL (SELECT sum(x.amount_far) AS slashed FROM far_slashes x WHERE x.session_id = s.id) x ON true;
