-- Money safety (issue #25): nothing is paid before verification could have convicted it, and cheating costs the
-- cheat's wallet more than it gains (docs/verification.md, "What cheating costs").
--
-- 1. A session records whether its worker sampled it for a spot check (`spot_checked`, from the usage record).
--    The payout claim (accounting.payable) takes a row only once its session was verified, or, for a session
--    that was not sampled, once it is older than the verifier's stated maximum lag; never a row with a
--    mismatch verdict.
-- 2. A mismatch verdict that found its row inside a payout batch ('already-claimed') is applied as soon as that
--    batch fails and releases the row (`far_apply_slashes()` looks at such verdicts again, and a release runs
--    it), so a released row of a cheat is slashed before any later batch can claim it.
-- 3. A mismatch forfeits every unpaid, unclaimed contribution row of the offender's registered wallet (all its
--    nodes, and the offender's own rows whether registered or not), once per verdict (`forfeited_at`). The
--    money goes to `far_slashes` (kind 'forfeit', disposition 'treasury'), so per session
--    sum(payment_far) + platform_remainder_far + sum(far_slashes.amount_far) = total_cost_far still holds
--    exactly, and `far_slashes`' primary key means no row is ever taken twice.
-- 4. A ban follows the wallet: `far_wallet_bans`; every node registered to (or announcing) a banned wallet is
--    banned in `far_node_reputation`, and mismatches count towards a ban across the wallet's nodes.
-- 5. New nodes start on probation: the reputation's prior is four imaginary failures, so a node scores 0.2
--    before its first check and stays below the routing line (0.4) until it has passed two.

ALTER TABLE far_mesh_sessions
    ADD COLUMN spot_checked BOOLEAN NOT NULL DEFAULT false;  -- the worker recorded its spans for the verifier

ALTER TABLE far_verifications
    -- when this mismatch's forfeiture of its wallet's unpaid earnings ran (once); mismatches recorded before
    -- this migration forfeit nothing retroactively and are marked as done when they were verified
    ADD COLUMN forfeited_at TIMESTAMPTZ,
    ADD CONSTRAINT far_verifications_forfeit_only_mismatches CHECK (verdict = 'mismatch' OR forfeited_at IS NULL);
UPDATE far_verifications SET forfeited_at = verified_at WHERE verdict = 'mismatch';
CREATE INDEX far_verifications_forfeit_due_idx ON far_verifications (id)
    WHERE verdict = 'mismatch' AND forfeited_at IS NULL;
CREATE INDEX far_verifications_released_idx ON far_verifications (request_id)
    WHERE verdict = 'mismatch' AND slash_outcome = 'already-claimed';
CREATE INDEX far_verifications_request_idx ON far_verifications (request_id, node_id);

-- 'slash': the convicted row itself; 'forfeit': another unpaid row of the convicted node's wallet.
ALTER TABLE far_slashes
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'slash' CHECK (kind IN ('slash', 'forfeit'));
CREATE INDEX far_slashes_verification_idx ON far_slashes (verification_id);

CREATE TABLE far_wallet_bans (
    wallet        TEXT PRIMARY KEY CHECK (far_is_wallet_address(wallet)),
    banned_until  TIMESTAMPTZ NOT NULL,
    node_id       TEXT NOT NULL,  -- the node whose mismatches banned the wallet (the latest ban's)
    banned_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The nodes whose conduct is charged to `node`'s wallet: the node itself and every node registered to the
-- wallet it is registered to (an unregistered node answers for itself alone).
CREATE FUNCTION far_wallet_nodes(node TEXT) RETURNS SETOF TEXT LANGUAGE sql STABLE AS $$
    SELECT node
    UNION
    SELECT mate.node_id FROM far_node_registrations own
      JOIN far_node_registrations mate ON mate.wallet = own.wallet
     WHERE own.node_id = node
$$;

CREATE OR REPLACE FUNCTION far_apply_slashes() RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    due RECORD;
    taken INTEGER := 0;
    n INTEGER;
BEGIN
    -- The convicted rows: verdicts not yet applied, and verdicts that found their row in a payout batch that
    -- has since failed and released it (unpaid and unclaimed again).
    FOR due IN
        SELECT DISTINCT ON (c.id) v.id AS verification_id, c.id AS contribution_id, s.id AS session_id, c.node_id
          FROM far_verifications v
          JOIN far_mesh_sessions s ON s.request_id = v.request_id
          JOIN far_session_contributions c ON c.session_id = s.id AND c.node_id = v.node_id
         WHERE v.verdict = 'mismatch'
           AND (v.slash_outcome IS NULL
                OR (v.slash_outcome = 'already-claimed' AND c.paid_at IS NULL AND c.payment_batch_id IS NULL))
         ORDER BY c.id, v.id
    LOOP
        -- Lock the row: a payout claiming it concurrently either claimed it first or waits and skips it.
        PERFORM 1 FROM far_session_contributions c
          WHERE c.id = due.contribution_id AND c.paid_at IS NULL AND c.payment_batch_id IS NULL
            AND NOT EXISTS (SELECT 1 FROM far_slashes x WHERE x.contribution_id = c.id)
          FOR UPDATE;
        IF FOUND THEN
            INSERT INTO far_slashes (contribution_id, session_id, node_id, verification_id, amount_far, kind)
            SELECT c.id, c.session_id, c.node_id, due.verification_id, c.payment_far, 'slash'
              FROM far_session_contributions c WHERE c.id = due.contribution_id;
            UPDATE far_session_contributions SET payment_far = 0 WHERE id = due.contribution_id;
            taken := taken + 1;
            UPDATE far_verifications SET slash_outcome = 'slashed'
             WHERE verdict = 'mismatch' AND (slash_outcome IS NULL OR slash_outcome = 'already-claimed')
               AND node_id = due.node_id
               AND request_id = (SELECT request_id FROM far_mesh_sessions WHERE id = due.session_id);
        ELSE
            -- claimed (again), or already taken: a released row that another verdict forfeited meanwhile counts
            -- as slashed, so no verdict is looked at again once its row's money is settled
            UPDATE far_verifications v SET slash_outcome = CASE
                       WHEN EXISTS (SELECT 1 FROM far_slashes x WHERE x.contribution_id = due.contribution_id)
                       THEN 'slashed' ELSE 'already-claimed' END
             WHERE v.verdict = 'mismatch' AND (v.slash_outcome IS NULL OR v.slash_outcome = 'already-claimed')
               AND v.node_id = due.node_id
               AND v.request_id = (SELECT request_id FROM far_mesh_sessions WHERE id = due.session_id);
        END IF;
    END LOOP;

    -- Forfeiture, once per mismatch (a concurrent caller skips a verdict another holds): every unpaid and
    -- unclaimed row of the offender's wallet. A row a concurrent slash or claim took first no longer matches
    -- (payment_far 0, or a batch id) once its lock is granted, so nothing is taken twice.
    FOR due IN
        SELECT v.id, v.node_id FROM far_verifications v
         WHERE v.verdict = 'mismatch' AND v.forfeited_at IS NULL
         ORDER BY v.id
           FOR UPDATE SKIP LOCKED
    LOOP
        WITH locked AS (
            SELECT c.id, c.session_id, c.node_id, c.payment_far FROM far_session_contributions c
             WHERE c.node_id IN (SELECT far_wallet_nodes(due.node_id))
               AND c.paid_at IS NULL AND c.payment_batch_id IS NULL AND c.payment_far > 0
             ORDER BY c.id
               FOR UPDATE
        ), forfeited AS (
            INSERT INTO far_slashes (contribution_id, session_id, node_id, verification_id, amount_far, kind)
            SELECT id, session_id, node_id, due.id, payment_far, 'forfeit' FROM locked
            RETURNING contribution_id
        )
        UPDATE far_session_contributions SET payment_far = 0 WHERE id IN (SELECT contribution_id FROM forfeited);
        GET DIAGNOSTICS n = ROW_COUNT;
        taken := taken + n;
        UPDATE far_verifications SET forfeited_at = now() WHERE id = due.id;
    END LOOP;
    RETURN taken;
END
$$;

-- A payout batch that fails releases its rows (payment_batch_id back to NULL): any verdict that found one of
-- them claimed is applied in the same transaction, before a later batch could claim the row again. (Triggers
-- fire in name order: this one's name sorts after the daily rollup's, which must count the release first.)
CREATE FUNCTION far_apply_slashes_on_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM released_before b JOIN released_after a ON a.id = b.id
                WHERE b.payment_batch_id IS NOT NULL AND a.payment_batch_id IS NULL) THEN
        PERFORM far_apply_slashes();
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER far_session_contributions_verdicts_applied_on_release
    AFTER UPDATE ON far_session_contributions
    REFERENCING OLD TABLE AS released_before NEW TABLE AS released_after
    FOR EACH STATEMENT EXECUTE FUNCTION far_apply_slashes_on_release();

-- Each node's standing. The score is the share of verified spans that passed, smoothed by one imaginary pass
-- and four imaginary failures, so a new node starts at 0.2 and is on probation (below 0.4, the routing line of
-- workers.route_policy) until it has passed two checks (3/7); a mismatch weighs ten passes and a failed step a
-- tenth of one. `banned` counts the node's own ban and its wallet's: a ban of the wallet it is registered to or
-- announces follows every peer id of that wallet, new ones included.
CREATE OR REPLACE VIEW far_node_reputation AS
SELECT n.node_id,
       n.public_name,
       n.verified_ok,
       n.verified_mismatches,
       n.failed_steps,
       n.last_verified_at,
       greatest(n.banned_until, wb.banned_until) AS banned_until,
       coalesce(greatest(n.banned_until, wb.banned_until) > now(), false) AS banned,
       round((n.verified_ok + 1)::NUMERIC
             / (n.verified_ok + 5 + 10 * n.verified_mismatches + 0.1 * n.failed_steps), 6) AS reputation,
       n.verified_ok < 2 AS on_probation
  FROM far_nodes n
  LEFT JOIN LATERAL (
        SELECT max(b.banned_until) AS banned_until FROM far_wallet_bans b
         WHERE b.wallet = n.wallet
            OR b.wallet = (SELECT r.wallet FROM far_node_registrations r WHERE r.node_id = n.node_id)
  ) wb ON true;
