-- Which chain a payout batch lives on. A chain id alone does not say it: a development node (ganache, hardhat,
-- anvil) restarted fresh serves the same chain id with every nonce back at 0, so the nonces the ledger recorded
-- for batches paid on the previous chain are used again, by transactions that are a different chain's. The
-- identity of a chain is its chain id and its genesis block's hash (which differs between two chains started
-- apart, and which `chain.node.LocalChain` makes unique per fresh ganache); a batch also records the token it
-- pays in. A reset chain or a new deployment is a different chain, never a nonce collision.
--
-- Batches signed before this migration have no genesis recorded (NULL): they keep the meaning they had, one
-- chain per chain id, and the payer still follows them on the chain it connects to.

ALTER TABLE far_payment_batches
    ADD COLUMN chain_genesis  TEXT CHECK (chain_genesis ~ '^0x[0-9a-f]{64}$'),  -- hash of the chain's block 0
    ADD COLUMN token          TEXT CHECK (token ~ '^0x[0-9a-fA-F]{40}$');       -- the $FAR contract it pays in

-- One nonce of one treasury on one chain belongs to one batch, ever: the chain is (chain id, genesis hash).
-- (Batches without a genesis stay unique among themselves, as they were.)
DROP INDEX far_payment_batches_one_batch_per_nonce;
CREATE UNIQUE INDEX far_payment_batches_one_batch_per_nonce
    ON far_payment_batches (chain_id, coalesce(chain_genesis, ''), sender, nonce) WHERE nonce IS NOT NULL;
