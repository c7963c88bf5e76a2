-- Contribution rows reference their session and node through checks run once per statement instead of
-- per-row foreign keys: the consumer COPYs thousands of rows per batch, and the two per-row foreign-key
-- lookups were about 40% of the ledger's CPU per batch. The guarantees stay: no contribution without its
-- session and its node, and no session or node deleted while a contribution names it; keys never change.
-- Like a foreign key, the insert check locks the rows it refers to (FOR KEY SHARE), so a concurrent delete
-- either waits for the insert and then fails its own check, or commits first and makes the insert fail.
-- (TRUNCATE, an owner's maintenance command, is not guarded.)
ALTER TABLE far_session_contributions
    DROP CONSTRAINT far_session_contributions_session_id_fkey,
    DROP CONSTRAINT far_session_contributions_node_id_fkey;

CREATE FUNCTION far_check_contribution_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing TEXT;
BEGIN
    -- The locking sub-selects stay index lookups per distinct key (a transition table has no statistics).
    SELECT 'session ' || t.session_id INTO missing
      FROM (SELECT DISTINCT session_id FROM changed_rows) t
     WHERE NOT EXISTS (SELECT 1 FROM far_mesh_sessions s WHERE s.id = t.session_id FOR KEY SHARE)
     LIMIT 1;
    IF missing IS NULL THEN
        SELECT 'node ' || t.node_id INTO missing
          FROM (SELECT DISTINCT node_id FROM changed_rows) t
         WHERE NOT EXISTS (SELECT 1 FROM far_nodes n WHERE n.node_id = t.node_id FOR KEY SHARE)
         LIMIT 1;
    END IF;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'a contribution refers to %, which is not in the ledger', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER far_session_contributions_references_exist
    AFTER INSERT ON far_session_contributions REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_check_contribution_references();

CREATE FUNCTION far_refuse_removing_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    referenced TEXT;
BEGIN
    IF TG_TABLE_NAME = 'far_mesh_sessions' THEN
        SELECT 'session ' || o.request_id INTO referenced FROM removed_rows o
         WHERE EXISTS (SELECT 1 FROM far_session_contributions c WHERE c.session_id = o.id) LIMIT 1;
    ELSE
        SELECT 'node ' || o.node_id INTO referenced FROM removed_rows o
         WHERE EXISTS (SELECT 1 FROM far_session_contributions c WHERE c.node_id = o.node_id) LIMIT 1;
    END IF;
    IF referenced IS NOT NULL THEN
        RAISE EXCEPTION '% has contribution rows and cannot be deleted', referenced
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER far_mesh_sessions_referenced_stay
    AFTER DELETE ON far_mesh_sessions REFERENCING OLD TABLE AS removed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_refuse_removing_referenced();
CREATE TRIGGER far_nodes_referenced_stay
    AFTER DELETE ON far_nodes REFERENCING OLD TABLE AS removed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_refuse_removing_referenced();

-- Keys are identities: a session, a node, or a contribution's session and node never change.
CREATE FUNCTION far_refuse_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the key of a % row never changes', TG_TABLE_NAME USING ERRCODE = 'foreign_key_violation';
END
$$;
CREATE TRIGGER far_mesh_sessions_key_is_fixed
    BEFORE UPDATE OF id ON far_mesh_sessions
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION far_refuse_key_change();
CREATE TRIGGER far_nodes_key_is_fixed
    BEFORE UPDATE OF node_id ON far_nodes
    FOR EACH ROW WHEN (OLD.node_id IS DISTINCT FROM NEW.node_id) EXECUTE FUNCTION far_refuse_key_change();
CREATE TRIGGER far_session_contributions_references_are_fixed
    BEFORE UPDATE OF session_id, node_id ON far_session_contributions
    FOR EACH ROW WHEN (OLD.session_id IS DISTINCT FROM NEW.session_id OR OLD.node_id IS DISTINCT FROM NEW.node_id)
    EXECUTE FUNCTION far_refuse_key_change();
