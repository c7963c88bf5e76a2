-- Buyers pay (#26): a double-entry journal, and the deposits on chain it credits (docs/deposits.md).
--
-- The journal. An entry is one event that moves value (a deposit, later a charge or a refund); its lines say
-- which named accounts it moves between, one signed NUMERIC(38,18) amount per account, and they sum to zero.
-- Signs: a line's amount is a DEBIT when positive and a CREDIT when negative. Accounts:
--   treasury:chain     an asset, the $FAR the treasury holds on chain because of deposits: debited (+) by one
--   buyer:<wallet>     a liability, what the service owes a buyer (its prepaid balance): credited (-) by one
-- so a deposit of A is the entry {treasury:chain +A, buyer:<wallet> -A}, and a buyer's balance is MINUS the sum
-- of its account's lines (far_buyer_balances). Balances are always derived from lines, never stored: no line,
-- entry or deposit is ever updated or deleted (triggers refuse it); a correction is a new, reversing entry.
--
-- That every entry balances is the database's to enforce, whoever writes: a deferred constraint trigger checks
-- each entry that got lines at commit (at least two lines, summing to zero), and far_journal_post, the function
-- the code writes entries with, refuses an unbalanced one at once.

CREATE TABLE far_journal_accounts (
    name        TEXT PRIMARY KEY CHECK (name ~ '^[a-z][a-z_]*:[0-9A-Za-z_.:-]+$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE far_journal_entries (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind ~ '^[a-z][a-z_]*$'),
    reference  TEXT NOT NULL CHECK (reference <> ''),  -- what it records, unique per kind: posted once, ever
    memo       TEXT NOT NULL DEFAULT '',
    posted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (kind, reference)
);

CREATE TABLE far_journal_lines (
    entry_id    BIGINT NOT NULL REFERENCES far_journal_entries (id),
    account     TEXT NOT NULL REFERENCES far_journal_accounts (name),
    amount_far  NUMERIC(38,18) NOT NULL CHECK (amount_far <> 0),  -- + debit, - credit
    PRIMARY KEY (entry_id, account)
);
CREATE INDEX far_journal_lines_account_idx ON far_journal_lines (account);

CREATE FUNCTION far_journal_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    entry  BIGINT;
    n      INTEGER;
    total  NUMERIC;
BEGIN
    IF TG_TABLE_NAME = 'far_journal_entries' THEN
        entry := NEW.id;
    ELSE
        entry := NEW.entry_id;
    END IF;
    SELECT count(*), coalesce(sum(amount_far), 0) INTO n, total FROM far_journal_lines WHERE entry_id = entry;
    IF n < 2 OR total <> 0 THEN
        RAISE EXCEPTION 'journal entry % does not balance: % lines summing to %', entry, n, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER far_journal_lines_balanced AFTER INSERT ON far_journal_lines
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION far_journal_check_balanced();
CREATE CONSTRAINT TRIGGER far_journal_entries_balanced AFTER INSERT ON far_journal_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION far_journal_check_balanced();

CREATE FUNCTION far_journal_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: post a reversing entry instead of changing or deleting a row', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER far_journal_entries_append_only BEFORE UPDATE OR DELETE ON far_journal_entries
    FOR EACH ROW EXECUTE FUNCTION far_journal_refuse_change();
CREATE TRIGGER far_journal_lines_append_only BEFORE UPDATE OR DELETE ON far_journal_lines
    FOR EACH ROW EXECUTE FUNCTION far_journal_refuse_change();

-- The one function that writes entries: the accounts (created on first use), the entry, its lines; an
-- unbalanced entry is refused here, before the deferred trigger would refuse it at commit. Returns the entry id.
CREATE FUNCTION far_journal_post(p_kind TEXT, p_reference TEXT, p_accounts TEXT[], p_amounts NUMERIC[],
                                 p_memo TEXT DEFAULT '') RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    entry  BIGINT;
    total  NUMERIC;
BEGIN
    IF coalesce(cardinality(p_accounts), 0) < 2 OR cardinality(p_accounts) <> coalesce(cardinality(p_amounts), 0) THEN
        RAISE EXCEPTION 'journal entry %/% needs two lines or more, one amount per account', p_kind, p_reference
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT sum(a) INTO total FROM unnest(p_amounts) AS a;
    IF total IS NULL OR total <> 0 THEN
        RAISE EXCEPTION 'journal entry %/% does not balance: its lines sum to %', p_kind, p_reference, total
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO far_journal_accounts (name) SELECT unnest(p_accounts) ON CONFLICT DO NOTHING;
    INSERT INTO far_journal_entries (kind, reference, memo) VALUES (p_kind, p_reference, p_memo) RETURNING id INTO entry;
    INSERT INTO far_journal_lines (entry_id, account, amount_far)
        SELECT entry, account, amount FROM unnest(p_accounts, p_amounts) AS l (account, amount);
    RETURN entry;
END $$;

-- Balances, derived from lines. far_journal_balances: every account's sum (debits positive);
-- far_buyer_balances: each buyer's prepaid balance, positive (the negated sum of a liability).
CREATE VIEW far_journal_balances AS
    SELECT account, sum(amount_far) AS balance_far, count(*) AS lines FROM far_journal_lines GROUP BY account;
CREATE VIEW far_buyer_balances AS
    SELECT substr(account, 7) AS wallet, -sum(amount_far) AS balance_far
    FROM far_journal_lines WHERE account LIKE 'buyer:%' GROUP BY account;

-- Deposits on chain: each FarDeposit `Deposited` event credited, once per (chain, transaction, log index), with
-- the journal entry that credited it. The chain is (chain id, genesis hash) as for payout batches (0015). A row is
-- written only once its log is DEPOSIT_CONFIRMATIONS deep, by far_credit_deposit.
CREATE TABLE far_chain_deposits (
    chain_id      BIGINT NOT NULL CHECK (chain_id > 0),
    chain_genesis TEXT NOT NULL CHECK (chain_genesis ~ '^0x[0-9a-f]{64}$'),
    tx_hash       TEXT NOT NULL CHECK (tx_hash ~ '^0x[0-9a-f]{64}$'),
    log_index     INTEGER NOT NULL CHECK (log_index >= 0),
    contract      TEXT NOT NULL CHECK (contract ~ '^0x[0-9a-fA-F]{40}$'),
    block_number  BIGINT NOT NULL CHECK (block_number >= 0),
    block_hash    TEXT NOT NULL CHECK (block_hash ~ '^0x[0-9a-f]{64}$'),
    wallet        TEXT NOT NULL CHECK (wallet ~ '^0x[0-9a-fA-F]{40}$'),
    amount_units  NUMERIC(78,0) NOT NULL CHECK (amount_units > 0),
    amount_far    NUMERIC(38,18) NOT NULL CHECK (amount_far * 1000000000000000000 = amount_units),
    entry_id      BIGINT NOT NULL UNIQUE REFERENCES far_journal_entries (id),
    credited_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, chain_genesis, tx_hash, log_index)
);
CREATE INDEX far_chain_deposits_wallet_idx ON far_chain_deposits (wallet);
CREATE TRIGGER far_chain_deposits_append_only BEFORE UPDATE OR DELETE ON far_chain_deposits
    FOR EACH ROW EXECUTE FUNCTION far_journal_refuse_change();

-- Credit one deep Deposited log: 'credited' (one entry posted), 'duplicate' (this log was credited before: a
-- restart, a re-scan) or 'moved' (its transaction was credited at another block, so a reorganisation deeper than
-- the confirmations moved it: never credited twice; docs/deposits.md).
CREATE FUNCTION far_credit_deposit(p_chain_id BIGINT, p_genesis TEXT, p_contract TEXT, p_tx_hash TEXT,
                                   p_log_index INTEGER, p_block_number BIGINT, p_block_hash TEXT, p_wallet TEXT,
                                   p_units NUMERIC) RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    amount  NUMERIC(38,18) := p_units * 0.000000000000000001;  -- exact (a division rounds to 16 digits)
    entry   BIGINT;
BEGIN
    IF EXISTS (SELECT FROM far_chain_deposits WHERE chain_id = p_chain_id AND chain_genesis = p_genesis
               AND tx_hash = p_tx_hash AND log_index = p_log_index) THEN
        RETURN 'duplicate';
    END IF;
    IF EXISTS (SELECT FROM far_chain_deposits WHERE chain_id = p_chain_id AND chain_genesis = p_genesis
               AND tx_hash = p_tx_hash AND block_hash <> p_block_hash) THEN
        RETURN 'moved';
    END IF;
    entry := far_journal_post(
        'deposit',
        format('%s:%s:%s:%s', p_chain_id, p_genesis, p_tx_hash, p_log_index),
        ARRAY['treasury:chain', 'buyer:' || p_wallet],
        ARRAY[amount, -amount],
        format('%s FAR deposited by %s', amount, p_wallet));
    INSERT INTO far_chain_deposits (chain_id, chain_genesis, tx_hash, log_index, contract, block_number, block_hash,
                                    wallet, amount_units, amount_far, entry_id)
    VALUES (p_chain_id, p_genesis, p_tx_hash, p_log_index, p_contract, p_block_number, p_block_hash, p_wallet,
            p_units, amount, entry);
    RETURN 'credited';
END $$;

-- Where the watcher is: each scan it committed, up to a deep block and that block's hash. The newest is the
-- checkpoint it resumes after; when the node no longer has that hash at that height (a reorganisation deeper
-- than the confirmations), the watcher falls back to the newest scan whose block is still on the chain and scans
-- again from there. It keeps the last 256 per contract.
CREATE TABLE far_deposit_scans (
    chain_id      BIGINT NOT NULL CHECK (chain_id > 0),
    chain_genesis TEXT NOT NULL CHECK (chain_genesis ~ '^0x[0-9a-f]{64}$'),
    contract      TEXT NOT NULL CHECK (contract ~ '^0x[0-9a-fA-F]{40}$'),
    block_number  BIGINT NOT NULL CHECK (block_number >= 0),
    block_hash    TEXT NOT NULL CHECK (block_hash ~ '^0x[0-9a-f]{64}$'),
    scanned_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, chain_genesis, contract, block_number)
);
