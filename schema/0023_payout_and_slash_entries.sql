-- Buyers pay (#26 part 2): payouts, slashes and forfeits are journal entries (schema/0020), posted exactly once in
-- the transaction that records them, so every provider's payable and the treasury's account derive from entries
-- (docs/deposits.md, "Payouts, slashes and forfeits").
--
-- Signs as before: a positive line is a debit, a negative one a credit.
--   payout (kind 'payout', reference '<batch id>:<wallet>'): when a batch becomes 'paid', one entry per wallet it
--     paid: provider:<node id> debited (+) what the batch paid for that node's rows of charged sessions (the
--     payable shrinks), expense:uncharged_sessions debited (+) what it paid for rows of sessions stored before
--     charges existed (schema/0022: nothing was ever credited to a payable for them), and treasury:chain credited
--     (-) the wallet's amount (the $FAR left the treasury). The wallet in the reference is what
--     `far-mesh ledger reconcile` holds against that wallet's receipts on chain.
--   slash / forfeit (kind 'slash' or 'forfeit', reference '<contribution id>'): when far_slashes takes a row of a
--     charged session, provider:<node id> debited (+) its amount and platform:slashes credited (-): the treasury
--     keeps slashed $FAR (disposition 'treasury', schema/0013), so it becomes the platform's revenue instead of
--     the provider's payable. A row of an uncharged session was never in a payable: no entry.
-- Both are triggers, so every writer (the payer's mark_paid, `payouts resolve`, far_apply_slashes from the verifier
-- or from a released batch) posts them in its own transaction, and (kind, reference) being unique means never twice.

-- Which node's rows a batch pays to which wallet, fixed when it is claimed (the node's registration then). The
-- payout entry is built from it: a node transferred to another wallet after the claim still had its claimed rows
-- paid to the wallet of the claim.
CREATE TABLE far_payout_claims (
    batch_id    BIGINT NOT NULL REFERENCES far_payment_batches (id),
    node_id     TEXT NOT NULL,
    wallet      TEXT NOT NULL CHECK (wallet ~ '^0x[0-9a-fA-F]{40}$'),
    PRIMARY KEY (batch_id, node_id)
);

-- Whether a session was charged in the journal (schema/0022): only then do its rows sit in provider payables.
CREATE FUNCTION far_session_charged(p_session_id UUID) RETURNS BOOLEAN LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM far_mesh_sessions s JOIN far_journal_entries e
                     ON e.kind = 'charge' AND e.reference = s.request_id
                    WHERE s.id = p_session_id)
$$;

-- Post the payout entries of a paid batch: one per wallet it paid. A batch claimed before far_payout_claims existed
-- maps a node to its registration's wallet, else to the wallet its rows announced (as such batches were claimed);
-- if that mapping does not add up to what the batch paid a wallet (a node transferred since), the difference is
-- put in suspense:payouts, which reconciliation shows, rather than refusing to record money that moved.
CREATE FUNCTION far_post_payout(p_batch_id BIGINT) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    w         RECORD;
    accounts  TEXT[];
    amounts   NUMERIC[];
    covered   NUMERIC;
    posted    INTEGER := 0;
BEGIN
    FOR w IN
        SELECT wallet, amount_far FROM far_payout_payments WHERE batch_id = p_batch_id
        UNION ALL
        SELECT c.wallet, sum(c.payment_far) FROM far_session_contributions c
         WHERE c.payment_batch_id = p_batch_id AND c.wallet IS NOT NULL
           AND NOT EXISTS (SELECT FROM far_payout_payments p WHERE p.batch_id = p_batch_id)
         GROUP BY c.wallet HAVING sum(c.payment_far) > 0
        ORDER BY 1
    LOOP
        WITH rows AS (
            SELECT c.node_id, c.payment_far, far_session_charged(c.session_id) AS charged
              FROM far_session_contributions c
              LEFT JOIN far_payout_claims pc ON pc.batch_id = p_batch_id AND pc.node_id = c.node_id
             WHERE c.payment_batch_id = p_batch_id AND c.payment_far > 0
               AND lower(coalesce(pc.wallet,
                                  (SELECT r.wallet FROM far_node_registrations r WHERE r.node_id = c.node_id),
                                  c.wallet)) = lower(w.wallet)
        ), lines AS (
            SELECT CASE WHEN charged THEN far_provider_account(node_id) ELSE 'expense:uncharged_sessions' END
                       AS account,
                   sum(payment_far) AS amount
              FROM rows GROUP BY 1
        )
        SELECT coalesce(array_agg(account ORDER BY account), '{}'), coalesce(array_agg(amount ORDER BY account), '{}'),
               coalesce(sum(amount), 0)
          INTO accounts, amounts, covered
          FROM lines;
        IF covered <> w.amount_far THEN
            accounts := accounts || 'suspense:payouts'::TEXT;
            amounts := amounts || (w.amount_far - covered);
        END IF;
        accounts := accounts || 'treasury:chain'::TEXT;
        amounts := amounts || -w.amount_far;
        PERFORM far_journal_post('payout', format('%s:%s', p_batch_id, w.wallet), accounts, amounts,
                                 format('%s FAR paid to %s by payout batch %s', w.amount_far, w.wallet, p_batch_id));
        posted := posted + 1;
    END LOOP;
    RETURN posted;
END $$;

CREATE FUNCTION far_post_payout_on_paid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM far_post_payout(NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER far_payment_batches_paid_posts_payout
    AFTER UPDATE OF status ON far_payment_batches
    FOR EACH ROW WHEN (NEW.status = 'paid' AND OLD.status IS DISTINCT FROM 'paid')
    EXECUTE FUNCTION far_post_payout_on_paid();

-- Slashes and forfeits of charged sessions' rows move the amount from the provider's payable to the platform.
CREATE FUNCTION far_post_slashes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s  RECORD;
BEGIN
    FOR s IN SELECT contribution_id, node_id, amount_far, kind FROM taken
              WHERE amount_far > 0 AND far_session_charged(session_id)
              ORDER BY contribution_id
    LOOP
        PERFORM far_journal_post(s.kind, s.contribution_id::TEXT,
                                 ARRAY[far_provider_account(s.node_id), 'platform:slashes'],
                                 ARRAY[s.amount_far, -s.amount_far],
                                 format('%s FAR of contribution %s (%s) kept by the treasury', s.amount_far,
                                        s.contribution_id, s.kind));
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER far_slashes_post_entries
    AFTER INSERT ON far_slashes REFERENCING NEW TABLE AS taken
    FOR EACH STATEMENT EXECUTE FUNCTION far_post_slashes();

-- What happened before this migration is posted now, once: the batches already paid (their node-to-wallet mapping
-- from the registrations, as far_post_payout does for batches claimed before far_payout_claims) and the slashes and
-- forfeits of sessions already charged.
SELECT far_post_payout(id) FROM far_payment_batches WHERE status = 'paid' ORDER BY id;
SELECT far_journal_post(x.kind, x.contribution_id::TEXT, ARRAY[far_provider_account(x.node_id), 'platform:slashes'],
                        ARRAY[x.amount_far, -x.amount_far],
                        format('%s FAR of contribution %s (%s) kept by the treasury', x.amount_far, x.contribution_id,
                               x.kind))
  FROM far_slashes x
 WHERE x.amount_far > 0 AND far_session_charged(x.session_id)
 ORDER BY x.contribution_id;
