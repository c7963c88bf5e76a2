-- The gateway's role, for least privilege: the process facing the internet reads API keys and nothing else.
-- far_mesh_gateway is a NOLOGIN group role holding exactly what the gateway's queries need: gateway/api_keys.py
-- reads far_api_keys, gateway/request_history.py asks whether a request id has a session (the request_id column
-- only: no wallet, cost or node of anyone's session), and its migration wait reads schema_migrations. tests/deploy
-- checks each table the gateway's code names is granted here. A deployment gives it a login of its own
-- (deploy/README.md), e.g.  CREATE ROLE far_mesh_gateway_login LOGIN PASSWORD '...' IN ROLE far_mesh_gateway;
-- and puts that role in the gateway's POSTGRES_URL, never the owner's.
--
-- Roles belong to the cluster, not the database: creating it is skipped when it exists (another database of the
-- same cluster, or an operator, made it) and refused with a warning, not an error, when the migrating user may
-- not create roles; an operator then creates it and runs this file by hand (it is idempotent: the grants are per
-- database and repeat harmlessly). Keys are issued and revoked by `far-mesh keys` with the owner's URL.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'far_mesh_gateway') THEN
        IF NOT (SELECT rolcreaterole OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            RAISE WARNING 'role far_mesh_gateway does not exist and % may not create roles: create it '
                '(CREATE ROLE far_mesh_gateway NOLOGIN), then run schema/0011_gateway_role.sql by hand', current_user;
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE far_mesh_gateway NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- a migration of another database on the same cluster created it in between
        END;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO far_mesh_gateway', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO far_mesh_gateway', current_schema());
    GRANT SELECT ON far_api_keys, schema_migrations TO far_mesh_gateway;
    GRANT SELECT (request_id) ON far_mesh_sessions TO far_mesh_gateway;
END
$$;
