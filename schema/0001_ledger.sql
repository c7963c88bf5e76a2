-- The $FAR ledger: sessions billed to users, contributions owed to nodes, the node registry and payouts.
-- Money is NUMERIC(38,18), never float. Nodes are keyed by their DHT peer id (base58 text), the same id the
-- swarm reports, so contribution rows can be matched to the servers that did the work.

CREATE TABLE far_nodes (
    node_id        TEXT PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 128),
    wallet         TEXT CHECK (wallet ~ '^0x[0-9a-fA-F]{40}$'),
    public_name    TEXT,
    state          TEXT NOT NULL DEFAULT 'unknown',
    throughput     DOUBLE PRECISION CHECK (throughput >= 0),  -- tokens/s the server announces; not money
    gpu_model      TEXT,
    vram_gb        NUMERIC(8,2) CHECK (vram_gb >= 0),
    location       TEXT,
    first_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at   TIMESTAMPTZ  -- when a swarm snapshot last showed it; NULL: known only from contributions
);
CREATE INDEX far_nodes_online_idx ON far_nodes (last_seen_at) WHERE state = 'online';

CREATE TABLE far_node_models (
    node_id            TEXT NOT NULL REFERENCES far_nodes (node_id) ON DELETE CASCADE,
    model_id           TEXT NOT NULL,
    start_block        INTEGER NOT NULL CHECK (start_block >= 0),
    end_block          INTEGER NOT NULL,
    throughput         DOUBLE PRECISION CHECK (throughput >= 0),
    state              TEXT NOT NULL,
    cache_tokens_left  BIGINT CHECK (cache_tokens_left >= 0),
    quantization       TEXT,
    last_seen_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, model_id),
    CHECK (end_block > start_block)
);

CREATE TABLE far_mesh_sessions (
    id                      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id              TEXT NOT NULL UNIQUE CHECK (length(request_id) BETWEEN 1 AND 64),
    user_wallet             TEXT CHECK (user_wallet ~ '^0x[0-9a-fA-F]{40}$'),
    api_key_id              TEXT,
    model_id                TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('completed', 'cancelled', 'failed')),
    finish_reason           TEXT,
    prompt_tokens           BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    tokens_generated        BIGINT NOT NULL CHECK (tokens_generated >= 0),
    price_per_token_far     NUMERIC(38,18) NOT NULL CHECK (price_per_token_far >= 0),
    total_cost_far          NUMERIC(38,18) NOT NULL CHECK (total_cost_far >= 0),
    platform_remainder_far  NUMERIC(38,18) NOT NULL CHECK (platform_remainder_far >= 0),
    started_at              TIMESTAMPTZ NOT NULL,
    finished_at             TIMESTAMPTZ NOT NULL,
    time_to_first_token_ms  DOUBLE PRECISION CHECK (time_to_first_token_ms >= 0),
    failovers               INTEGER NOT NULL DEFAULT 0 CHECK (failovers >= 0),
    worker_id               TEXT NOT NULL,
    recorded_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    finalized_at            TIMESTAMPTZ,
    CONSTRAINT far_mesh_sessions_cost_is_tokens_times_price CHECK (total_cost_far = tokens_generated * price_per_token_far),
    CONSTRAINT far_mesh_sessions_remainder_within_cost CHECK (platform_remainder_far <= total_cost_far),
    CONSTRAINT far_mesh_sessions_finished_after_start CHECK (finished_at >= started_at)
);

CREATE TABLE far_payment_batches (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'failed')),
    payer            TEXT NOT NULL,
    min_far          NUMERIC(38,18) NOT NULL CHECK (min_far >= 0),
    total_far        NUMERIC(38,18) NOT NULL CHECK (total_far >= 0),
    wallet_count     INTEGER NOT NULL CHECK (wallet_count >= 0),
    row_count        INTEGER NOT NULL CHECK (row_count >= 0),
    transaction_ref  TEXT,
    failure_reason   TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ,
    CONSTRAINT far_payment_batches_paid_has_reference CHECK (status <> 'paid' OR transaction_ref IS NOT NULL)
);

CREATE TABLE far_session_contributions (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id          UUID NOT NULL REFERENCES far_mesh_sessions (id),
    node_id             TEXT NOT NULL REFERENCES far_nodes (node_id),
    wallet              TEXT CHECK (wallet ~ '^0x[0-9a-fA-F]{40}$'),
    blocks_served       INTEGER NOT NULL CHECK (blocks_served >= 0),
    tokens_contributed  BIGINT NOT NULL CHECK (tokens_contributed >= 0),
    work_units          BIGINT NOT NULL CHECK (work_units >= 0),
    payment_far         NUMERIC(38,18) NOT NULL CHECK (payment_far >= 0),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    payment_batch_id    BIGINT REFERENCES far_payment_batches (id),
    paid_at             TIMESTAMPTZ,
    transaction_ref     TEXT,
    CONSTRAINT far_session_contributions_one_per_node UNIQUE (session_id, node_id),
    CONSTRAINT far_session_contributions_paid_has_reference
        CHECK ((paid_at IS NULL) = (transaction_ref IS NULL) AND (paid_at IS NULL OR payment_batch_id IS NOT NULL))
);
CREATE INDEX far_session_contributions_node_idx ON far_session_contributions (node_id);
CREATE INDEX far_session_contributions_batch_idx ON far_session_contributions (payment_batch_id)
    WHERE payment_batch_id IS NOT NULL;
CREATE INDEX far_session_contributions_unpaid_idx ON far_session_contributions (wallet)
    WHERE paid_at IS NULL AND payment_batch_id IS NULL AND wallet IS NOT NULL;

-- Payments may never exceed what the session cost the user (checked once per statement, set-based, so the
-- consumer's bulk inserts stay fast). Equality with the remainder is checked at finalisation.
CREATE FUNCTION far_check_payments_within_cost() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
BEGIN
    -- LATERAL keeps this an index lookup per touched session (the transition table has no statistics).
    SELECT s.request_id, s.total_cost_far, s.platform_remainder_far, p.paid
      INTO offender
      FROM (SELECT DISTINCT session_id FROM changed_rows) t
      JOIN far_mesh_sessions s ON s.id = t.session_id
     CROSS JOIN LATERAL (SELECT sum(c.payment_far) AS paid FROM far_session_contributions c
                          WHERE c.session_id = t.session_id) p
     WHERE p.paid + s.platform_remainder_far > s.total_cost_far
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'payments % + remainder % exceed total_cost_far % of session %',
            offender.paid, offender.platform_remainder_far, offender.total_cost_far, offender.request_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER far_session_contributions_insert_within_cost
    AFTER INSERT ON far_session_contributions REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_check_payments_within_cost();
CREATE TRIGGER far_session_contributions_update_within_cost
    AFTER UPDATE ON far_session_contributions REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION far_check_payments_within_cost();

-- A paid row is history: what it paid, to whom and under which reference never changes.
CREATE FUNCTION far_freeze_paid_contributions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.paid_at IS NOT NULL AND ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        RAISE EXCEPTION 'contribution % was paid at % (ref %) and cannot change', OLD.id, OLD.paid_at, OLD.transaction_ref
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER far_session_contributions_paid_are_frozen
    BEFORE UPDATE OR DELETE ON far_session_contributions
    FOR EACH ROW WHEN (OLD.paid_at IS NOT NULL) EXECUTE FUNCTION far_freeze_paid_contributions();

-- Session finalisation: a session is final once its payments plus the platform remainder equal its cost
-- exactly. Raises (and finalises nothing) when any of the given sessions does not balance.
CREATE FUNCTION far_finalize_sessions(session_ids UUID[]) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    offender RECORD;
    finalized INTEGER;
BEGIN
    SELECT s.request_id, s.total_cost_far, s.platform_remainder_far, coalesce(sum(c.payment_far), 0) AS paid
      INTO offender
      FROM far_mesh_sessions s
      LEFT JOIN far_session_contributions c ON c.session_id = s.id
     WHERE s.id = ANY (session_ids)
     GROUP BY s.id
    HAVING coalesce(sum(c.payment_far), 0) + s.platform_remainder_far <> s.total_cost_far
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'session % does not balance: payments % + remainder % <> total_cost_far %',
            offender.request_id, offender.paid, offender.platform_remainder_far, offender.total_cost_far
            USING ERRCODE = 'check_violation';
    END IF;
    UPDATE far_mesh_sessions SET finalized_at = now() WHERE id = ANY (session_ids) AND finalized_at IS NULL;
    GET DIAGNOSTICS finalized = ROW_COUNT;
    RETURN finalized;
END
$$;

-- Nodes the swarm reported online recently (snapshots are taken every few seconds; two minutes of silence
-- means the node or every worker watching it is gone).
CREATE VIEW active_far_nodes AS
SELECT n.node_id,
       n.wallet,
       n.public_name,
       n.throughput,
       n.last_seen_at,
       count(m.model_id) AS models_served,
       coalesce(sum(m.end_block - m.start_block), 0) AS blocks_held
  FROM far_nodes n
  LEFT JOIN far_node_models m ON m.node_id = n.node_id AND m.state = 'online'
 WHERE n.state = 'online' AND n.last_seen_at >= now() - interval '2 minutes'
 GROUP BY n.node_id;

-- What each node earned, was paid, has in a payment batch in flight, and is still owed.
CREATE VIEW node_earnings_summary AS
SELECT n.node_id,
       n.wallet,
       n.public_name,
       count(c.id) AS sessions_served,
       coalesce(sum(c.tokens_contributed), 0) AS tokens_contributed,
       coalesce(sum(c.work_units), 0) AS work_units,
       coalesce(sum(c.payment_far), 0)::NUMERIC(38,18) AS total_earned_far,
       coalesce(sum(c.payment_far) FILTER (WHERE c.paid_at IS NOT NULL), 0)::NUMERIC(38,18) AS paid_far,
       coalesce(sum(c.payment_far) FILTER (WHERE c.paid_at IS NULL AND c.payment_batch_id IS NOT NULL), 0)::NUMERIC(38,18)
           AS in_payment_far,
       coalesce(sum(c.payment_far) FILTER (WHERE c.paid_at IS NULL AND c.payment_batch_id IS NULL), 0)::NUMERIC(38,18)
           AS unpaid_far,
       max(c.created_at) AS last_contribution_at
  FROM far_nodes n
  LEFT JOIN far_session_contributions c ON c.node_id = n.node_id
 GROUP BY n.node_id;
