-- Per-key budgets and limits, the way LiteLLM's virtual keys work. NULL everywhere means "no limit of this key's
-- own": unlimited spend, no expiry, every model, and the gateway's configured rate and concurrency limits.
-- A period budget caps what the key spends per UTC day, ISO week or calendar month, on top of the total one.
-- The gateway reads these columns with far_api_keys (already granted); to rebuild a key's spend from the ledger
-- and to answer GET /v1/usage it reads, of each session, only who paid, for which model, when, and how much.

ALTER TABLE far_api_keys
    ADD COLUMN max_budget_far          NUMERIC(38,18) CHECK (max_budget_far >= 0 AND max_budget_far <= 9000000),
    ADD COLUMN period_budget_far       NUMERIC(38,18) CHECK (period_budget_far >= 0 AND period_budget_far <= 9000000),
    ADD COLUMN budget_period           TEXT CHECK (budget_period IN ('day', 'week', 'month')),
    ADD COLUMN expires_at              TIMESTAMPTZ,
    ADD COLUMN allowed_models          TEXT[] CHECK (cardinality(allowed_models) BETWEEN 1 AND 100),
    ADD COLUMN rate_limit_per_minute   INTEGER CHECK (rate_limit_per_minute BETWEEN 1 AND 1000000),
    ADD COLUMN max_concurrent_streams  INTEGER CHECK (max_concurrent_streams BETWEEN 1 AND 100000),
    ADD CONSTRAINT far_api_keys_period_budget_has_a_period CHECK ((period_budget_far IS NULL) = (budget_period IS NULL)),
    ADD CONSTRAINT far_api_keys_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at);

CREATE INDEX far_mesh_sessions_api_key_idx ON far_mesh_sessions (api_key_id, started_at) WHERE api_key_id IS NOT NULL;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'far_mesh_gateway') THEN
        GRANT SELECT (request_id, api_key_id, model_id, started_at, tokens_generated, total_cost_far)
            ON far_mesh_sessions TO far_mesh_gateway;
    END IF;
END
$$;
