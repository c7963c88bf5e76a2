-- Accounting at a bare COPY's speed (#32 item 4): a batch's charges (schema/0022) in one set-based statement
-- instead of a loop posting one entry per session, and the journal's lines checked once per statement instead of
-- once per line at commit.
--
-- far_post_session_charges looped over a batch's sessions calling far_journal_post (four statements a session),
-- and each line queued a deferred check, one query over its entry's lines: for a batch of 1,000 sessions of four
-- providers, about 5,000 statements and 6,000 queries at commit, most of the ledger's CPU per batch
-- (docs/performance.md). Now:
-- * far_post_session_charges inserts the batch's accounts, entries and lines in one statement. Entries are
--   numbered in request id order, with the memo and the lines the loop gave them; a session already charged is
--   skipped, and the function returns how many entries it posted, as before.
-- * A statement inserting lines is checked at its end, once: every entry it added lines to must have two lines
--   or more summing to zero (far_journal_lines_balanced, now a statement trigger over the inserted rows). An
--   entry's lines therefore arrive in one statement, as far_journal_post and this function write them. Each
--   entry is still checked at commit by its own deferred trigger (far_journal_entries_balanced), so an entry
--   without lines is refused as before, and nothing can change a line once written (schema/0020).

CREATE OR REPLACE FUNCTION far_post_session_charges(p_session_ids UUID[]) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    posted  INTEGER;
BEGIN
    WITH charged AS MATERIALIZED (
        SELECT s.id, s.request_id, s.user_wallet, s.total_cost_far, s.platform_fee_far, s.platform_remainder_far
          FROM far_mesh_sessions s
         WHERE s.id = ANY (p_session_ids) AND s.total_cost_far > 0
           AND NOT EXISTS (SELECT FROM far_journal_entries e WHERE e.kind = 'charge' AND e.reference = s.request_id)
    ), lines AS MATERIALIZED (
        SELECT c.id AS session_id, coalesce('buyer:' || c.user_wallet, 'receivable:unattributed') AS account,
               c.total_cost_far AS amount
          FROM charged c
        UNION ALL
        SELECT sc.session_id, far_provider_account(sc.node_id), -sc.payment_far
          FROM far_session_contributions sc
         WHERE sc.session_id IN (SELECT id FROM charged) AND sc.payment_far > 0
        UNION ALL
        SELECT c.id, 'platform:fees', -c.platform_fee_far FROM charged c WHERE c.platform_fee_far > 0
        UNION ALL
        SELECT c.id, 'platform:remainder', -c.platform_remainder_far FROM charged c WHERE c.platform_remainder_far > 0
    ), accounts AS (
        INSERT INTO far_journal_accounts (name) SELECT DISTINCT account FROM lines ORDER BY 1 ON CONFLICT DO NOTHING
    ), entries AS (
        INSERT INTO far_journal_entries (kind, reference, memo)
        SELECT 'charge', c.request_id, format('%s FAR for session %s', c.total_cost_far, c.request_id)
          FROM charged c ORDER BY c.request_id
        RETURNING id, reference
    ), posted_lines AS (
        INSERT INTO far_journal_lines (entry_id, account, amount_far)
        SELECT e.id, l.account, l.amount
          FROM lines l JOIN charged c ON c.id = l.session_id JOIN entries e ON e.reference = c.request_id
    )
    SELECT count(*) INTO posted FROM entries;
    RETURN posted;
END $$;

CREATE FUNCTION far_journal_check_inserted_lines() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
BEGIN
    SELECT l.entry_id, count(*) AS n, sum(l.amount_far) AS total INTO offender
      FROM far_journal_lines l
     WHERE l.entry_id IN (SELECT DISTINCT entry_id FROM inserted_lines)
     GROUP BY l.entry_id
    HAVING count(*) < 2 OR sum(l.amount_far) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance: % lines summing to %', offender.entry_id, offender.n,
            offender.total USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER far_journal_lines_balanced ON far_journal_lines;
CREATE TRIGGER far_journal_lines_balanced AFTER INSERT ON far_journal_lines
    REFERENCING NEW TABLE AS inserted_lines FOR EACH STATEMENT EXECUTE FUNCTION far_journal_check_inserted_lines();
