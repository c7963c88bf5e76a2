-- Journal lines reference their entry and their account through the check run once per statement
-- (far_journal_lines_balanced, schema/0027) instead of two per-row foreign keys, as contributions do (schema/0003).
-- The consumer writes about six lines per session charged, and the two per-row lookups were about a sixth of the
-- ledger's CPU per batch (docs/performance.md). The guarantees stay:
-- * no line without its entry and its account: the statement's check looks each distinct entry and account up once;
-- * no entry or account removed while a line names it: entries were already append-only (schema/0020), and now
--   accounts are too, so neither is ever deleted nor re-keyed. No lock is needed for that: nothing can remove
--   what a line names, and what a concurrent transaction has not committed is refused, not waited for.
-- (TRUNCATE, an owner's maintenance command, is not guarded.)
ALTER TABLE far_journal_lines
    DROP CONSTRAINT far_journal_lines_entry_id_fkey,
    DROP CONSTRAINT far_journal_lines_account_fkey;

CREATE TRIGGER far_journal_accounts_append_only BEFORE UPDATE OR DELETE ON far_journal_accounts
    FOR EACH ROW EXECUTE FUNCTION far_journal_refuse_change();

CREATE OR REPLACE FUNCTION far_journal_check_inserted_lines() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
    missing  TEXT;
BEGIN
    -- Per distinct entry: its row (the primary key) and its lines (the primary key's prefix), one lookup each.
    SELECT t.entry_id, e.id IS NULL AS absent, b.n, b.total INTO offender
      FROM (SELECT DISTINCT entry_id FROM inserted_lines) t
      LEFT JOIN far_journal_entries e ON e.id = t.entry_id
     CROSS JOIN LATERAL (SELECT count(*) AS n, sum(l.amount_far) AS total
                           FROM far_journal_lines l WHERE l.entry_id = t.entry_id) b
     WHERE e.id IS NULL OR b.n < 2 OR b.total <> 0
     LIMIT 1;
    IF FOUND AND offender.absent THEN
        RAISE EXCEPTION 'a journal line refers to entry %, which is not in the journal', offender.entry_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance: % lines summing to %', offender.entry_id, offender.n,
            offender.total USING ERRCODE = 'check_violation';
    END IF;
    SELECT t.account INTO missing
      FROM (SELECT DISTINCT account FROM inserted_lines) t
     WHERE NOT EXISTS (SELECT FROM far_journal_accounts a WHERE a.name = t.account)
     LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'a journal line names account %, which is not in the journal', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;
