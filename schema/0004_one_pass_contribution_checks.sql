-- The consumer writes each session with all its contributions in one transaction. Checking them took three
-- passes over the batch's sessions, an index lookup each (the reference check, the within-cost check, then
-- far_finalize_sessions' balance check), and far_finalize_sessions' UPDATE rewrote every session row: together
-- about 40% of the ledger's CPU per batch. Now one statement trigger does the session's reference and money
-- checks in one pass, and it also holds a session already marked final to the exact balance. The consumer
-- inserts its sessions final, so the trigger's check at the end of the COPY is what far_finalize_sessions
-- checked, and no UPDATE follows (sessions without contributions still go through far_finalize_sessions).
-- A final session is held to equality after every statement that adds to it, so its contributions arrive in
-- one statement (the consumer's COPY); a session not yet final is held to payments <= cost, as before.
DROP TRIGGER far_session_contributions_insert_within_cost ON far_session_contributions;
DROP TRIGGER far_session_contributions_references_exist ON far_session_contributions;
DROP FUNCTION far_check_contribution_references();

CREATE FUNCTION far_check_inserted_contributions() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
    missing TEXT;
BEGIN
    -- Per distinct session, one locking lookup (FOR KEY SHARE, as a foreign key takes: a concurrent delete
    -- waits, then fails its own check) and one sum over its contributions (the index on session_id).
    SELECT t.session_id, s.id IS NULL AS absent, s.request_id, s.total_cost_far, s.platform_remainder_far,
           s.finalized_at, p.paid
      INTO offender
      FROM (SELECT DISTINCT session_id FROM changed_rows) t
      LEFT JOIN LATERAL (SELECT * FROM far_mesh_sessions s WHERE s.id = t.session_id FOR KEY SHARE) s ON true
     CROSS JOIN LATERAL (SELECT sum(c.payment_far) AS paid FROM far_session_contributions c
                          WHERE c.session_id = t.session_id) p
     WHERE s.id IS NULL
        OR p.paid + s.platform_remainder_far > s.total_cost_far
        OR (s.finalized_at IS NOT NULL AND p.paid + s.platform_remainder_far <> s.total_cost_far)
     LIMIT 1;
    IF FOUND AND offender.absent THEN
        RAISE EXCEPTION 'a contribution refers to session %, which is not in the ledger', offender.session_id
            USING ERRCODE = 'foreign_key_violation';
    ELSIF FOUND AND offender.paid + offender.platform_remainder_far > offender.total_cost_far THEN
        RAISE EXCEPTION 'payments % + remainder % exceed total_cost_far % of session %',
            offender.paid, offender.platform_remainder_far, offender.total_cost_far, offender.request_id
            USING ERRCODE = 'check_violation';
    ELSIF FOUND THEN
        RAISE EXCEPTION 'session % does not balance: payments % + remainder % <> total_cost_far %',
            offender.request_id, offender.paid, offender.platform_remainder_far, offender.total_cost_far
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
CREATE TRIGGER far_session_contributions_inserted_are_checked
    AFTER INSERT ON far_session_contributions REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_check_inserted_contributions();
