-- API keys: who may spend, and which wallet they spend from. The secret is never stored: only its SHA-256
-- (the secret is 256 random bits, so a slow hash adds nothing), compared in constant time by the gateway.
-- `key_id` is public (it appears in logs, usage records and `far-mesh keys revoke`).

CREATE TABLE far_api_keys (
    key_id       TEXT PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    secret_hash  BYTEA NOT NULL CHECK (octet_length(secret_hash) = 32),
    wallet       TEXT NOT NULL CHECK (wallet ~ '^0x[0-9a-fA-F]{40}$'),
    label        TEXT NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ,
    CHECK (revoked_at IS NULL OR revoked_at >= created_at)
);
CREATE INDEX far_api_keys_wallet_idx ON far_api_keys (wallet);
