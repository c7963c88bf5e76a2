-- Every wallet column was checked with the regex '^0x[0-9a-fA-F]{40}$': ~3 us a row, a third of the PostgreSQL
-- CPU of the consumer's COPY into far_session_contributions. This function accepts exactly the same texts
-- (42 bytes, "0x", then 40 characters from the hex set, each one byte) for ~0.5 us; being a plain SQL
-- expression, PostgreSQL inlines it into each check. The EIP-55 checksum stays the services' job.
-- The new checks are added NOT VALID, which holds each table's lock only for a moment; 0006 validates them
-- without blocking writes (the old checks held every existing row to the same rule).
CREATE FUNCTION far_is_wallet_address(address TEXT) RETURNS BOOLEAN
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT octet_length(address) = 42 AND rtrim(address, '0123456789abcdefABCDEF') = '0x' $$;

ALTER TABLE far_nodes
    DROP CONSTRAINT far_nodes_wallet_check,
    ADD CONSTRAINT far_nodes_wallet_check CHECK (far_is_wallet_address(wallet)) NOT VALID;
ALTER TABLE far_mesh_sessions
    DROP CONSTRAINT far_mesh_sessions_user_wallet_check,
    ADD CONSTRAINT far_mesh_sessions_user_wallet_check CHECK (far_is_wallet_address(user_wallet)) NOT VALID;
ALTER TABLE far_session_contributions
    DROP CONSTRAINT far_session_contributions_wallet_check,
    ADD CONSTRAINT far_session_contributions_wallet_check CHECK (far_is_wallet_address(wallet)) NOT VALID;
ALTER TABLE far_api_keys
    DROP CONSTRAINT far_api_keys_wallet_check,
    ADD CONSTRAINT far_api_keys_wallet_check CHECK (far_is_wallet_address(wallet)) NOT VALID;
