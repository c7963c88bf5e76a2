-- What each node earned per UTC day and model, kept up to date by the statements that change contribution rows,
-- in their own transaction: earnings pages read O(days) rows instead of node_earnings_summary's scan of every
-- contribution. The triggers are statement-level with transition tables, one aggregate per statement, so the
-- accounting consumer's COPY of a batch adds one upsert per (node, day, model) it touched, not one per row.
-- Sums of a node's rows here equal its node_earnings_summary row exactly (tests/schema checks it).

CREATE TABLE far_node_daily_earnings (
    node_id               TEXT NOT NULL,
    model_id              TEXT NOT NULL,
    day                   DATE NOT NULL,
    sessions_served       BIGINT NOT NULL CHECK (sessions_served >= 0),
    tokens_contributed    BIGINT NOT NULL CHECK (tokens_contributed >= 0),
    work_units            BIGINT NOT NULL CHECK (work_units >= 0),
    earned_far            NUMERIC(38,18) NOT NULL CHECK (earned_far >= 0),
    paid_far              NUMERIC(38,18) NOT NULL CHECK (paid_far >= 0),
    in_payment_far        NUMERIC(38,18) NOT NULL CHECK (in_payment_far >= 0),
    unpaid_far            NUMERIC(38,18) NOT NULL CHECK (unpaid_far >= 0),
    last_contribution_at  TIMESTAMPTZ,
    PRIMARY KEY (node_id, day, model_id),
    CHECK (earned_far = paid_far + in_payment_far + unpaid_far)
);

-- Rows that left (UPDATE's old images, DELETE) are subtracted, rows that arrived (INSERT, UPDATE's new images)
-- are added. Each distinct session is looked up once for its model (a transition table has no statistics, so
-- the LATERAL keeps it an index lookup), then joined back to the rows.
CREATE FUNCTION far_roll_up_contributions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        WITH models AS (
            SELECT t.session_id, s.model_id
              FROM (SELECT DISTINCT session_id FROM old_rows) t
             CROSS JOIN LATERAL (SELECT model_id FROM far_mesh_sessions s WHERE s.id = t.session_id) s
        ), gone AS (
            SELECT o.node_id, m.model_id, (o.created_at AT TIME ZONE 'UTC')::date AS day,
                   count(*) AS sessions_served,
                   sum(o.tokens_contributed) AS tokens_contributed,
                   sum(o.work_units) AS work_units,
                   sum(o.payment_far) AS earned_far,
                   coalesce(sum(o.payment_far) FILTER (WHERE o.paid_at IS NOT NULL), 0) AS paid_far,
                   coalesce(sum(o.payment_far) FILTER (WHERE o.paid_at IS NULL AND o.payment_batch_id IS NOT NULL), 0)
                       AS in_payment_far,
                   coalesce(sum(o.payment_far) FILTER (WHERE o.paid_at IS NULL AND o.payment_batch_id IS NULL), 0)
                       AS unpaid_far
              FROM old_rows o JOIN models m USING (session_id)
             GROUP BY 1, 2, 3
        )
        UPDATE far_node_daily_earnings d
           SET sessions_served = d.sessions_served - g.sessions_served,
               tokens_contributed = d.tokens_contributed - g.tokens_contributed,
               work_units = d.work_units - g.work_units,
               earned_far = d.earned_far - g.earned_far,
               paid_far = d.paid_far - g.paid_far,
               in_payment_far = d.in_payment_far - g.in_payment_far,
               unpaid_far = d.unpaid_far - g.unpaid_far
          FROM gone g
         WHERE d.node_id = g.node_id AND d.day = g.day AND d.model_id = g.model_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO far_node_daily_earnings AS d
               (node_id, model_id, day, sessions_served, tokens_contributed, work_units, earned_far, paid_far,
                in_payment_far, unpaid_far, last_contribution_at)
        SELECT n.node_id, m.model_id, (n.created_at AT TIME ZONE 'UTC')::date,
               count(*), sum(n.tokens_contributed), sum(n.work_units), sum(n.payment_far),
               coalesce(sum(n.payment_far) FILTER (WHERE n.paid_at IS NOT NULL), 0),
               coalesce(sum(n.payment_far) FILTER (WHERE n.paid_at IS NULL AND n.payment_batch_id IS NOT NULL), 0),
               coalesce(sum(n.payment_far) FILTER (WHERE n.paid_at IS NULL AND n.payment_batch_id IS NULL), 0),
               max(n.created_at)
          FROM new_rows n
          JOIN (SELECT t.session_id, s.model_id
                  FROM (SELECT DISTINCT session_id FROM new_rows) t
                 CROSS JOIN LATERAL (SELECT model_id FROM far_mesh_sessions s WHERE s.id = t.session_id) s) m
         USING (session_id)
         GROUP BY 1, 2, 3
         ORDER BY 1, 3, 2  -- key order: concurrent consumers lock the rows they share in the same order
        ON CONFLICT (node_id, day, model_id) DO UPDATE SET
               sessions_served = d.sessions_served + EXCLUDED.sessions_served,
               tokens_contributed = d.tokens_contributed + EXCLUDED.tokens_contributed,
               work_units = d.work_units + EXCLUDED.work_units,
               earned_far = d.earned_far + EXCLUDED.earned_far,
               paid_far = d.paid_far + EXCLUDED.paid_far,
               in_payment_far = d.in_payment_far + EXCLUDED.in_payment_far,
               unpaid_far = d.unpaid_far + EXCLUDED.unpaid_far,
               last_contribution_at = greatest(d.last_contribution_at, EXCLUDED.last_contribution_at);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        -- Rare (payout state changes, an operator's delete): drop emptied days, and recompute the latest
        -- contribution time of the days rows left, which a subtraction cannot know.
        DELETE FROM far_node_daily_earnings d
         USING (SELECT DISTINCT node_id, (created_at AT TIME ZONE 'UTC')::date AS day FROM old_rows) o
         WHERE d.node_id = o.node_id AND d.day = o.day AND d.sessions_served = 0;
        IF TG_OP = 'UPDATE' THEN
            -- new_rows exists only for an UPDATE: this statement is planned only when it runs
            IF NOT EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n USING (id)
                            WHERE o.created_at IS DISTINCT FROM n.created_at) THEN
                RETURN NULL;
            END IF;
        END IF;
        UPDATE far_node_daily_earnings d
           SET last_contribution_at = (
                   SELECT max(c.created_at) FROM far_session_contributions c
                     JOIN far_mesh_sessions s ON s.id = c.session_id
                    WHERE c.node_id = d.node_id AND s.model_id = d.model_id
                      AND (c.created_at AT TIME ZONE 'UTC')::date = d.day)
          FROM (SELECT DISTINCT node_id, (created_at AT TIME ZONE 'UTC')::date AS day FROM old_rows) o
         WHERE d.node_id = o.node_id AND d.day = o.day;
    END IF;
    RETURN NULL;
END
$$;

-- Transition tables allow one event per trigger: three triggers, one function.
CREATE TRIGGER far_session_contributions_rolled_up_on_insert
    AFTER INSERT ON far_session_contributions REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_roll_up_contributions();
CREATE TRIGGER far_session_contributions_rolled_up_on_update
    AFTER UPDATE ON far_session_contributions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_roll_up_contributions();
CREATE TRIGGER far_session_contributions_rolled_up_on_delete
    AFTER DELETE ON far_session_contributions REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_roll_up_contributions();

-- The rows stored before the triggers existed. Writers wait on this lock until the migration commits, then
-- see the triggers, so no row is counted twice or missed.
LOCK TABLE far_session_contributions IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO far_node_daily_earnings
       (node_id, model_id, day, sessions_served, tokens_contributed, work_units, earned_far, paid_far,
        in_payment_far, unpaid_far, last_contribution_at)
SELECT c.node_id, s.model_id, (c.created_at AT TIME ZONE 'UTC')::date,
       count(*), sum(c.tokens_contributed), sum(c.work_units), sum(c.payment_far),
       coalesce(sum(c.payment_far) FILTER (WHERE c.paid_at IS NOT NULL), 0),
       coalesce(sum(c.payment_far) FILTER (WHERE c.paid_at IS NULL AND c.payment_batch_id IS NOT NULL), 0),
       coalesce(sum(c.payment_far) FILTER (WHERE c.paid_at IS NULL AND c.payment_batch_id IS NULL), 0),
       max(c.created_at)
  FROM far_session_contributions c
  JOIN far_mesh_sessions s ON s.id = c.session_id
 GROUP BY 1, 2, 3;

-- node_earnings_summary's totals, from the rollup: the same columns, O(days) per node.
CREATE VIEW node_earnings_rollup AS
SELECT n.node_id,
       n.wallet,
       n.public_name,
       coalesce(sum(d.sessions_served), 0)::BIGINT AS sessions_served,
       coalesce(sum(d.tokens_contributed), 0)::NUMERIC AS tokens_contributed,
       coalesce(sum(d.work_units), 0)::NUMERIC AS work_units,
       coalesce(sum(d.earned_far), 0)::NUMERIC(38,18) AS total_earned_far,
       coalesce(sum(d.paid_far), 0)::NUMERIC(38,18) AS paid_far,
       coalesce(sum(d.in_payment_far), 0)::NUMERIC(38,18) AS in_payment_far,
       coalesce(sum(d.unpaid_far), 0)::NUMERIC(38,18) AS unpaid_far,
       max(d.last_contribution_at) AS last_contribution_at
  FROM far_nodes n
  LEFT JOIN far_node_daily_earnings d ON d.node_id = n.node_id
 GROUP BY n.node_id;
