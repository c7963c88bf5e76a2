-- Buyers pay (#26 part 5): a buyer withdraws unspent prepaid balance to its wallet (docs/deposits.md,
-- "Withdrawals"). The request, signed by the wallet in the portal, is journaled at once, so the balance it takes can
-- never be spent by admission too; the chain payer pays it in a payout batch of its own, with the same exactly-once
-- machinery as providers' earnings (one nonce per batch, committed before broadcast, schema/0008 and 0015).
--
-- Journal (signs as in schema/0020: + debit, - credit):
--   withdrawal (reference: the signed request's nonce): buyer:<wallet> +A (the service owes the buyer A less),
--     withdrawing:<wallet> -A (and owes it A on chain instead, until paid);
--   withdrawal_paid (reference '<batch id>:<wallet>', as a payout's): when the batch is paid, withdrawing:<wallet>
--     +A, treasury:chain -A (the $FAR left the treasury). A batch that fails releases its withdrawals for a later
--     batch; nothing in the journal moves until one is paid.

ALTER TABLE far_portal_nonces DROP CONSTRAINT far_portal_nonces_purpose_check;
ALTER TABLE far_portal_nonces
    ADD CONSTRAINT far_portal_nonces_purpose_check CHECK (purpose IN ('sign-in', 'register', 'transfer', 'withdraw'));

-- What a batch pays: providers' earnings (its rows are contributions) or buyers' withdrawals (far_withdrawals).
ALTER TABLE far_payment_batches
    ADD COLUMN purpose TEXT NOT NULL DEFAULT 'earnings' CHECK (purpose IN ('earnings', 'withdrawals'));

CREATE TABLE far_withdrawals (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    wallet        TEXT NOT NULL CHECK (wallet ~ '^0x[0-9a-fA-F]{40}$'),
    amount_far    NUMERIC(38,18) NOT NULL CHECK (amount_far > 0),
    nonce         TEXT NOT NULL UNIQUE,                                   -- of the signed request: one per signature
    statement     TEXT NOT NULL,                                          -- the text the wallet signed
    signature     TEXT NOT NULL CHECK (signature ~ '^0x[0-9a-f]{130}$'),
    entry_id      BIGINT NOT NULL UNIQUE REFERENCES far_journal_entries (id),
    batch_id      BIGINT REFERENCES far_payment_batches (id),             -- the batch paying it now, or that paid it
    paid_at       TIMESTAMPTZ,
    requested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (paid_at IS NULL OR batch_id IS NOT NULL)
);
CREATE INDEX far_withdrawals_wallet_idx ON far_withdrawals (wallet, id);
CREATE INDEX far_withdrawals_unclaimed_idx ON far_withdrawals (id) WHERE batch_id IS NULL;

-- Record a signed withdrawal of p_amount by p_wallet and journal it; returns its id. Serialised per wallet (an
-- advisory lock), it refuses an amount above the journal's balance of the wallet (SQLSTATE check_violation): the
-- portal has already held it against what requests in flight hold (protocol.balances.WITHDRAW).
CREATE FUNCTION far_request_withdrawal(p_wallet TEXT, p_amount NUMERIC, p_nonce TEXT, p_statement TEXT,
                                       p_signature TEXT) RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    balance  NUMERIC;
    entry    BIGINT;
    taken    BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('far_withdraw:' || p_wallet, 0));
    SELECT coalesce(-sum(amount_far), 0) INTO balance FROM far_journal_lines WHERE account = 'buyer:' || p_wallet;
    IF p_amount > balance THEN
        RAISE EXCEPTION 'withdrawal of % FAR refused: the balance of % is % FAR', p_amount, p_wallet, balance
            USING ERRCODE = 'check_violation';
    END IF;
    entry := far_journal_post('withdrawal', p_nonce, ARRAY['buyer:' || p_wallet, 'withdrawing:' || p_wallet],
                              ARRAY[p_amount, -p_amount], format('%s FAR withdrawn by %s', p_amount, p_wallet));
    INSERT INTO far_withdrawals (wallet, amount_far, nonce, statement, signature, entry_id)
    VALUES (p_wallet, p_amount, p_nonce, p_statement, p_signature, entry)
    RETURNING far_withdrawals.id INTO taken;
    RETURN taken;
END $$;

-- Post the withdrawal_paid entries of a paid withdrawals batch (one per wallet) and mark its withdrawals paid.
CREATE FUNCTION far_post_withdrawals_paid(p_batch_id BIGINT) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    w       RECORD;
    posted  INTEGER := 0;
BEGIN
    FOR w IN SELECT wallet, amount_far FROM far_payout_payments WHERE batch_id = p_batch_id ORDER BY wallet LOOP
        PERFORM far_journal_post('withdrawal_paid', format('%s:%s', p_batch_id, w.wallet),
                                 ARRAY['withdrawing:' || w.wallet, 'treasury:chain'],
                                 ARRAY[w.amount_far, -w.amount_far],
                                 format('%s FAR withdrawn by %s paid by batch %s', w.amount_far, w.wallet, p_batch_id));
        posted := posted + 1;
    END LOOP;
    UPDATE far_withdrawals SET paid_at = now() WHERE batch_id = p_batch_id AND paid_at IS NULL;
    RETURN posted;
END $$;

CREATE OR REPLACE FUNCTION far_post_payout_on_paid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.purpose = 'withdrawals' THEN
        PERFORM far_post_withdrawals_paid(NEW.id);
    ELSE
        PERFORM far_post_payout(NEW.id);
    END IF;
    RETURN NULL;
END $$;

-- A withdrawals batch that failed paid nothing: its withdrawals go back to be claimed by a later batch.
CREATE FUNCTION far_release_withdrawals_on_failure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE far_withdrawals SET batch_id = NULL WHERE batch_id = NEW.id AND paid_at IS NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER far_payment_batches_failed_releases_withdrawals
    AFTER UPDATE OF status ON far_payment_batches
    FOR EACH ROW WHEN (NEW.status = 'failed' AND OLD.status IS DISTINCT FROM 'failed' AND NEW.purpose = 'withdrawals')
    EXECUTE FUNCTION far_release_withdrawals_on_failure();

-- A withdrawal's rows are never changed but to be claimed, released or paid.
CREATE FUNCTION far_withdrawals_keep_request() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR (NEW.wallet, NEW.amount_far, NEW.nonce, NEW.statement, NEW.signature, NEW.entry_id)
                           IS DISTINCT FROM (OLD.wallet, OLD.amount_far, OLD.nonce, OLD.statement, OLD.signature,
                                             OLD.entry_id)
       OR OLD.paid_at IS NOT NULL THEN
        RAISE EXCEPTION 'withdrawal % is recorded: only its batch may change, until it is paid', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER far_withdrawals_recorded BEFORE UPDATE OR DELETE ON far_withdrawals
    FOR EACH ROW EXECUTE FUNCTION far_withdrawals_keep_request();
