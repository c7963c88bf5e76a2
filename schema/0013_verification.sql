-- Verification of providers' work: spot-check verdicts, slashed contributions and node reputation.
--
-- The verifier recomputes sampled spans of real sessions (verifier/) and records one verdict per span here.
-- A mismatch slashes that node's contribution row of the session: its payment_far moves, whole, into
-- far_slashes (payment_far becomes 0), so no payout can claim it (payouts claim only payment_far > 0) and
-- every earnings view and rollup shows it unearned. Slashed $FAR is kept by the treasury (docs/verification.md):
-- per session, sum(payment_far) + platform_remainder_far + sum(slashed amount_far) = total_cost_far, exactly.
-- A verdict can land before accounting has stored its session: far_apply_slashes() applies every pending one
-- whose contribution row exists, and the verifier calls it again until none is pending.

ALTER TABLE far_nodes
    ADD COLUMN verified_ok          BIGINT NOT NULL DEFAULT 0 CHECK (verified_ok >= 0),
    ADD COLUMN verified_mismatches  BIGINT NOT NULL DEFAULT 0 CHECK (verified_mismatches >= 0),
    ADD COLUMN failed_steps         BIGINT NOT NULL DEFAULT 0 CHECK (failed_steps >= 0),
    ADD COLUMN last_verified_at     TIMESTAMPTZ,
    ADD COLUMN banned_until         TIMESTAMPTZ;

-- One verdict per recorded span of a sampled session (span_index: its place in the verifier's message, so a
-- message verified twice after a crash records each verdict once).
CREATE TABLE far_verifications (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id      TEXT NOT NULL CHECK (length(request_id) BETWEEN 1 AND 64),
    span_index      INTEGER NOT NULL CHECK (span_index >= 0),
    model_id        TEXT NOT NULL,
    node_id         TEXT NOT NULL CHECK (length(node_id) BETWEEN 1 AND 128),
    start_block     INTEGER NOT NULL CHECK (start_block >= 0),
    end_block       INTEGER NOT NULL,
    steps           INTEGER NOT NULL CHECK (steps > 0),
    tokens          INTEGER NOT NULL CHECK (tokens > 0),
    max_error       DOUBLE PRECISION NOT NULL,  -- relative error, not money
    tolerance       DOUBLE PRECISION NOT NULL CHECK (tolerance > 0),
    verdict         TEXT NOT NULL CHECK (verdict IN ('ok', 'mismatch')),
    first_bad_step  INTEGER CHECK (first_bad_step >= 0),
    -- NULL: a mismatch not yet applied (its session not yet in the ledger); 'slashed'; 'already-claimed' (the
    -- row was in a payout before the verdict: the evidence stays, the money had left)
    slash_outcome   TEXT CHECK (slash_outcome IN ('slashed', 'already-claimed')),
    verified_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (request_id, span_index),
    CHECK (end_block > start_block),
    CHECK ((verdict = 'mismatch') = (first_bad_step IS NOT NULL)),
    CHECK (verdict = 'mismatch' OR slash_outcome IS NULL)
);
CREATE INDEX far_verifications_node_idx ON far_verifications (node_id, verified_at);
CREATE INDEX far_verifications_pending_idx ON far_verifications (request_id)
    WHERE verdict = 'mismatch' AND slash_outcome IS NULL;

-- A slashed contribution: what it would have paid, now kept by the treasury, and the evidence.
CREATE TABLE far_slashes (
    contribution_id  BIGINT PRIMARY KEY REFERENCES far_session_contributions (id),
    session_id       UUID NOT NULL REFERENCES far_mesh_sessions (id),
    node_id          TEXT NOT NULL,
    verification_id  BIGINT NOT NULL REFERENCES far_verifications (id),
    amount_far       NUMERIC(38,18) NOT NULL CHECK (amount_far >= 0),
    disposition      TEXT NOT NULL DEFAULT 'treasury' CHECK (disposition IN ('treasury')),
    slashed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX far_slashes_session_idx ON far_slashes (session_id);
CREATE INDEX far_slashes_node_idx ON far_slashes (node_id);

-- A slashed row stays unpaid: nothing may give it a payment or put it in a payout batch again.
CREATE FUNCTION far_keep_slashed_unpaid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM far_slashes WHERE contribution_id = NEW.id) THEN
        RAISE EXCEPTION 'contribution % was slashed and cannot be paid', NEW.id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER far_session_contributions_slashed_stay_unpaid
    BEFORE UPDATE OF payment_far, payment_batch_id, paid_at ON far_session_contributions
    FOR EACH ROW WHEN (NEW.payment_far > 0 OR NEW.payment_batch_id IS NOT NULL OR NEW.paid_at IS NOT NULL)
    EXECUTE FUNCTION far_keep_slashed_unpaid();

-- Apply every mismatch verdict whose contribution row exists and is not yet slashed. Rows still unclaimed are
-- slashed; rows a payout already claimed are marked 'already-claimed'. Returns the number of rows slashed.
CREATE FUNCTION far_apply_slashes() RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    due RECORD;
    slashed INTEGER := 0;
BEGIN
    FOR due IN
        SELECT DISTINCT ON (c.id) v.id AS verification_id, c.id AS contribution_id, s.id AS session_id, c.node_id
          FROM far_verifications v
          JOIN far_mesh_sessions s ON s.request_id = v.request_id
          JOIN far_session_contributions c ON c.session_id = s.id AND c.node_id = v.node_id
         WHERE v.verdict = 'mismatch' AND v.slash_outcome IS NULL
         ORDER BY c.id, v.id
    LOOP
        -- Lock the row: a payout claiming it concurrently either claimed it first or waits and skips it.
        PERFORM 1 FROM far_session_contributions c
          WHERE c.id = due.contribution_id AND c.paid_at IS NULL AND c.payment_batch_id IS NULL
            AND NOT EXISTS (SELECT 1 FROM far_slashes x WHERE x.contribution_id = c.id)
          FOR UPDATE;
        IF FOUND THEN
            INSERT INTO far_slashes (contribution_id, session_id, node_id, verification_id, amount_far)
            SELECT c.id, c.session_id, c.node_id, due.verification_id, c.payment_far
              FROM far_session_contributions c WHERE c.id = due.contribution_id;
            UPDATE far_session_contributions SET payment_far = 0 WHERE id = due.contribution_id;
            slashed := slashed + 1;
            UPDATE far_verifications SET slash_outcome = 'slashed'
             WHERE verdict = 'mismatch' AND slash_outcome IS NULL AND node_id = due.node_id
               AND request_id = (SELECT request_id FROM far_mesh_sessions WHERE id = due.session_id);
        ELSE
            UPDATE far_verifications v SET slash_outcome = CASE
                       WHEN EXISTS (SELECT 1 FROM far_slashes x WHERE x.contribution_id = due.contribution_id)
                       THEN 'slashed' ELSE 'already-claimed' END
             WHERE v.verdict = 'mismatch' AND v.slash_outcome IS NULL AND v.node_id = due.node_id
               AND v.request_id = (SELECT request_id FROM far_mesh_sessions WHERE id = due.session_id);
        END IF;
    END LOOP;
    RETURN slashed;
END
$$;

-- Per session, where its cost went; `balanced` must be true for every session, slashed or not.
CREATE VIEW far_session_balance AS
SELECT s.id AS session_id,
       s.request_id,
       s.total_cost_far,
       coalesce(p.paid, 0)::NUMERIC(38,18) AS payments_far,
       s.platform_remainder_far,
       coalesce(x.slashed, 0)::NUMERIC(38,18) AS slashed_far,
       coalesce(p.paid, 0) + s.platform_remainder_far + coalesce(x.slashed, 0) = s.total_cost_far AS balanced
  FROM far_mesh_sessions s
  LEFT JOIN LATERAL (SELECT sum(c.payment_far) AS paid FROM far_session_contributions c
                      WHERE c.session_id = s.id) p ON true
  LEFT JOIN LATERAL (SELECT sum(x.amount_far) AS slashed FROM far_slashes x WHERE x.session_id = s.id) x ON true;

-- Each node's standing: verified spans, mismatches, failed steps, and a score in [0, 1]. The score is the
-- share of verified spans that passed, smoothed (one imaginary pass and one imaginary failure, so a new node
-- starts at 0.5), with a mismatch weighing ten passes and a failed step a tenth of one.
CREATE VIEW far_node_reputation AS
SELECT n.node_id,
       n.public_name,
       n.verified_ok,
       n.verified_mismatches,
       n.failed_steps,
       n.last_verified_at,
       n.banned_until,
       (n.banned_until IS NOT NULL AND n.banned_until > now()) AS banned,
       round((n.verified_ok + 1)::NUMERIC
             / (n.verified_ok + 2 + 10 * n.verified_mismatches + 0.1 * n.failed_steps), 6) AS reputation
  FROM far_nodes n;
