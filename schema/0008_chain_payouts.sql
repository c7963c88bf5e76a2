-- Payouts on chain. A batch moves claimed -> signed -> submitted -> paid, or to failed; every transaction
-- the payer signs is recorded here, raw and hashed, and committed BEFORE it is broadcast, so a payer that
-- dies at any point resumes from what it committed and what the chain says, and never sends a second
-- transfer for the same rows: all transactions of a batch share one nonce, so at most one of them can land.
-- The old 'pending' (claimed, not settled) becomes 'claimed'; 'paid' keeps its meaning (rows carry paid_at).

ALTER TABLE far_payment_batches DROP CONSTRAINT far_payment_batches_status_check;
UPDATE far_payment_batches SET status = 'claimed' WHERE status = 'pending';
ALTER TABLE far_payment_batches
    ALTER COLUMN status SET DEFAULT 'claimed',
    ADD CONSTRAINT far_payment_batches_status_check
        CHECK (status IN ('claimed', 'signed', 'submitted', 'paid', 'failed')),
    ADD COLUMN chain_id      BIGINT CHECK (chain_id > 0),
    ADD COLUMN sender        TEXT CHECK (sender ~ '^0x[0-9a-fA-F]{40}$'),  -- the treasury that pays it
    ADD COLUMN nonce         BIGINT CHECK (nonce >= 0),                     -- the one nonce of all its transactions
    ADD COLUMN export_ref    TEXT,                                          -- the file payer's batch file
    ADD COLUMN gas_used      BIGINT CHECK (gas_used >= 0),
    ADD COLUMN gas_cost_wei  NUMERIC(78,0) CHECK (gas_cost_wei >= 0),
    ADD COLUMN confirmed_at  TIMESTAMPTZ,
    ADD CONSTRAINT far_payment_batches_signed_has_nonce
        CHECK (status <> 'signed' OR (nonce IS NOT NULL AND sender IS NOT NULL AND chain_id IS NOT NULL));

-- One nonce of one treasury on one chain belongs to one batch, ever.
CREATE UNIQUE INDEX far_payment_batches_one_batch_per_nonce ON far_payment_batches (chain_id, sender, nonce)
    WHERE nonce IS NOT NULL;
-- One on-chain transaction settles one batch, ever (so `payouts resolve --tx` cannot reuse a transfer).
CREATE UNIQUE INDEX far_payment_batches_one_batch_per_transaction ON far_payment_batches (lower(transaction_ref))
    WHERE status = 'paid' AND transaction_ref ~ '^0x[0-9a-fA-F]{64}$';
CREATE INDEX far_payment_batches_unsettled_idx ON far_payment_batches (id) WHERE status IN ('claimed', 'signed', 'submitted');

-- What a batch pays each wallet, fixed when it is claimed: the transaction is built from it and checked
-- against it, whatever happens to the rows' wallets afterwards.
CREATE TABLE far_payout_payments (
    batch_id    BIGINT NOT NULL REFERENCES far_payment_batches (id),
    wallet      TEXT NOT NULL CHECK (wallet ~ '^0x[0-9a-fA-F]{40}$'),
    amount_far  NUMERIC(38,18) NOT NULL CHECK (amount_far > 0),
    row_count   INTEGER NOT NULL CHECK (row_count > 0),
    PRIMARY KEY (batch_id, wallet)
);

-- Every transaction signed for a batch: the first attempt and each replacement (same nonce, higher fees).
-- state: signed (committed, maybe not yet broadcast) -> submitted -> confirmed | reverted, or replaced (a
-- later attempt superseded it) -> dropped (another attempt of the same nonce landed, so this one never can).
CREATE TABLE far_payout_transactions (
    id                        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id                  BIGINT NOT NULL REFERENCES far_payment_batches (id),
    tx_hash                   TEXT NOT NULL UNIQUE CHECK (tx_hash ~ '^0x[0-9a-f]{64}$'),
    raw_tx                    TEXT NOT NULL CHECK (raw_tx ~ '^0x[0-9a-f]+$'),
    nonce                     BIGINT NOT NULL CHECK (nonce >= 0),
    gas_limit                 BIGINT NOT NULL CHECK (gas_limit > 0),
    max_fee_per_gas           NUMERIC(78,0) NOT NULL CHECK (max_fee_per_gas > 0),
    max_priority_fee_per_gas  NUMERIC(78,0) NOT NULL CHECK (max_priority_fee_per_gas >= 0),
    state                     TEXT NOT NULL DEFAULT 'signed'
                              CHECK (state IN ('signed', 'submitted', 'replaced', 'confirmed', 'reverted', 'dropped')),
    replaces                  BIGINT REFERENCES far_payout_transactions (id),
    block_number              BIGINT CHECK (block_number >= 0),
    gas_used                  BIGINT CHECK (gas_used >= 0),
    effective_gas_price       NUMERIC(78,0) CHECK (effective_gas_price >= 0),
    signed_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    submitted_at              TIMESTAMPTZ,
    settled_at                TIMESTAMPTZ,
    CHECK (state NOT IN ('confirmed', 'reverted') OR (block_number IS NOT NULL AND gas_used IS NOT NULL))
);
CREATE INDEX far_payout_transactions_batch_idx ON far_payout_transactions (batch_id, id);
-- At most one transaction of a batch is mined: they all share its nonce.
CREATE UNIQUE INDEX far_payout_transactions_one_mined_per_batch ON far_payout_transactions (batch_id)
    WHERE state IN ('confirmed', 'reverted');
