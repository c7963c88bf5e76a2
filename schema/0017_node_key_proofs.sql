-- The node's own proof, kept with every registration and transfer from now on. Besides the wallet's signature
-- (schema/0009), the portal now requires the signature of the node's libp2p key over the same statement, with
-- the public key its peer id is a hash of (portal/registrations.py; docs/portal.md, "Node ownership"): the
-- wallet a node announces in the DHT is never evidence, since anyone can store a record under any peer id.
-- One row per event that key allowed, written in the same transaction, never updated, so anyone can verify
-- both signatures of a registration again. Events without a row here were accepted before this rule, on the
-- wallet the node announced.
CREATE TABLE far_node_registration_key_proofs (
    event_id         BIGINT PRIMARY KEY REFERENCES far_node_registration_events (id),
    -- base64 of the protobuf public key; NULL when the peer id inlines its key (Ed25519, secp256k1)
    node_public_key  TEXT CHECK (length(node_public_key) BETWEEN 1 AND 2000),
    -- base64 of the node key's signature over the event's statement (UTF-8)
    node_signature   TEXT NOT NULL CHECK (length(node_signature) BETWEEN 1 AND 2000),
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
