-- Node ownership. The wallet a node announces in its DHT public name is not authenticated: any peer can write
-- any public name, so a contribution row's `wallet` is only a hint. A node is paid once its peer id is
-- registered to a wallet by a statement, naming both, that the wallet signed (EIP-191 personal_sign; the
-- portal verifies the signature and stores the evidence here). Until then its earnings are held, unclaimed,
-- against the peer id, and they become payable to the registered wallet as soon as it registers.
-- Moving a peer to another wallet needs a statement signed by the wallet that owns it now.

CREATE TABLE far_node_registrations (
    node_id        TEXT PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 128),
    wallet         TEXT NOT NULL CHECK (far_is_wallet_address(wallet)),
    statement      TEXT NOT NULL CHECK (length(statement) BETWEEN 1 AND 4000),
    signature      TEXT NOT NULL CHECK (signature ~ '^0x[0-9a-f]{130}$'),
    registered_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX far_node_registrations_wallet_idx ON far_node_registrations (wallet);

-- Every registration and transfer ever made, with the signatures that allowed it; never updated.
CREATE TABLE far_node_registration_events (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id              TEXT NOT NULL,
    wallet               TEXT NOT NULL CHECK (far_is_wallet_address(wallet)),
    previous_wallet      TEXT CHECK (far_is_wallet_address(previous_wallet)),
    statement            TEXT NOT NULL,
    signature            TEXT NOT NULL,
    owner_statement      TEXT,
    owner_signature      TEXT,
    recorded_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- a transfer carries the current owner's consent; a first registration has no owner to ask
    CHECK ((previous_wallet IS NULL) = (owner_signature IS NULL) AND (owner_signature IS NULL) = (owner_statement IS NULL))
);
CREATE INDEX far_node_registration_events_node_idx ON far_node_registration_events (node_id, id);

-- Register `node`'s peer id to `new_wallet`, or move it there from the wallet that owns it now.
-- The caller has verified the signatures; this keeps the rule that makes them matter: a registered peer
-- moves only with evidence from its owner, `expected_owner` must still be the owner (a concurrent transfer
-- makes this one fail instead of silently overriding it), and every change is logged with its evidence.
-- Returns 'registered', 'transferred' or 'unchanged' (already registered to that wallet).
CREATE FUNCTION far_register_node(
    node TEXT, new_wallet TEXT, new_statement TEXT, new_signature TEXT,
    expected_owner TEXT DEFAULT NULL, owner_statement TEXT DEFAULT NULL, owner_signature TEXT DEFAULT NULL
) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    current_owner TEXT;
BEGIN
    SELECT wallet INTO current_owner FROM far_node_registrations WHERE node_id = node FOR UPDATE;
    IF NOT FOUND THEN
        IF expected_owner IS NOT NULL THEN
            RAISE EXCEPTION 'node % is not registered, so it has no owner to transfer it', node
                USING ERRCODE = 'no_data_found';
        END IF;
        INSERT INTO far_node_registrations (node_id, wallet, statement, signature)
        VALUES (node, new_wallet, new_statement, new_signature);
        INSERT INTO far_node_registration_events (node_id, wallet, statement, signature)
        VALUES (node, new_wallet, new_statement, new_signature);
        RETURN 'registered';
    END IF;
    IF current_owner = new_wallet THEN
        RETURN 'unchanged';
    END IF;
    IF expected_owner IS NULL OR owner_signature IS NULL OR owner_statement IS NULL THEN
        RAISE EXCEPTION 'node % is registered to %; moving it needs a statement signed by that wallet', node, current_owner
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF expected_owner <> current_owner THEN
        RAISE EXCEPTION 'node % is registered to %, not %', node, current_owner, expected_owner
            USING ERRCODE = 'serialization_failure';
    END IF;
    UPDATE far_node_registrations
       SET wallet = new_wallet, statement = new_statement, signature = new_signature, registered_at = now()
     WHERE node_id = node;
    INSERT INTO far_node_registration_events
           (node_id, wallet, previous_wallet, statement, signature, owner_statement, owner_signature)
    VALUES (node, new_wallet, current_owner, new_statement, new_signature, owner_statement, owner_signature);
    RETURN 'transferred';
END
$$;

-- The wallet a node is paid to: its registered one, never the announced hint. NULL: not registered (held).
CREATE FUNCTION far_registered_wallet(node TEXT) RETURNS TEXT
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT wallet FROM far_node_registrations WHERE node_id = node $$;

-- Contribution rows that can be paid, each with the wallet that is paid: the node's registered wallet,
-- resolved when the payout runs (a transfer moves the unpaid earnings with the node). A payout claims from
-- here exactly as it claimed from far_session_contributions, `wallet` being the registered one; FOR UPDATE
-- through this view locks the contribution row and the registration, so a transfer waits for the claim.
CREATE VIEW far_payable_contributions AS
SELECT c.id,
       c.session_id,
       c.node_id,
       r.wallet,
       c.wallet AS announced_wallet,
       c.blocks_served,
       c.tokens_contributed,
       c.work_units,
       c.payment_far,
       c.created_at,
       c.payment_batch_id,
       c.paid_at,
       c.transaction_ref
  FROM far_session_contributions c
  JOIN far_node_registrations r ON r.node_id = c.node_id;

-- Earnings held because their node is not registered: per peer id, what it is owed and the wallets it
-- announced (a hint for its operator, never a payee).
CREATE VIEW far_unclaimed_earnings AS
SELECT c.node_id,
       array_agg(DISTINCT c.wallet) FILTER (WHERE c.wallet IS NOT NULL) AS announced_wallets,
       count(*) AS contributions,
       sum(c.payment_far)::NUMERIC(38,18) AS unclaimed_far,
       min(c.created_at) AS first_contribution_at,
       max(c.created_at) AS last_contribution_at
  FROM far_session_contributions c
 WHERE c.paid_at IS NULL AND c.payment_batch_id IS NULL
   AND NOT EXISTS (SELECT 1 FROM far_node_registrations r WHERE r.node_id = c.node_id)
 GROUP BY c.node_id;

-- Nonces the portal hands out for a message to sign (sign-in, registration, transfer). A message is accepted
-- only by deleting its nonce, unexpired and issued for that purpose, so each nonce works once; expired ones
-- are swept as new ones are issued.
CREATE TABLE far_portal_nonces (
    nonce       TEXT PRIMARY KEY CHECK (nonce ~ '^[A-Za-z0-9]{8,64}$'),
    purpose     TEXT NOT NULL CHECK (purpose IN ('sign-in', 'register', 'transfer')),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX far_portal_nonces_expiry_idx ON far_portal_nonces (expires_at);
