-- Buyers pay (#26 part 4): each stored session's cost is charged in the journal (schema/0020), in the transaction
-- that stores it, as one entry of kind 'charge' whose reference is the session's request id, so it is posted
-- exactly once whatever redeliveries happen (the usage stream is at least once; (kind, reference) is unique).
-- Accounts and signs (docs/deposits.md, "Charges"): a positive line is a debit, a negative one a credit.
--   buyer:<wallet>            debited (+) the session's total_cost_far: the service owes the buyer that much less
--   receivable:unattributed   debited instead for a session billed to no wallet (records from before wallets)
--   provider:<node id>        credited (-) each node's payment_far: a payable, what the service owes that provider
--                             (a node id outside the account-name alphabet is named provider:md5.<md5 of the id>)
--   platform:fees             credited (-) the session's platform_fee_far: the platform's revenue
--   platform:remainder        credited (-) the session's platform_remainder_far: what rounding shares down left over
-- The lines sum to zero because the session balances (payments + fee + remainder = total cost, schema/0019). Zero
-- amounts get no line, and a session that cost nothing gets no entry. Sessions stored before this migration are
-- not charged here (they were billed before there were balances).

CREATE FUNCTION far_provider_account(p_node_id TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_node_id ~ '^[0-9A-Za-z_.:-]+$' THEN 'provider:' || p_node_id
                ELSE 'provider:md5.' || md5(p_node_id) END
$$;

-- Post the charge of each of these sessions; returns how many entries it posted. A session already charged is
-- skipped, so calling it twice for one session posts one entry.
CREATE FUNCTION far_post_session_charges(p_session_ids UUID[]) RETURNS INTEGER LANGUAGE plpgsql AS $$
DECLARE
    s         RECORD;
    accounts  TEXT[];
    amounts   NUMERIC[];
    posted    INTEGER := 0;
BEGIN
    FOR s IN SELECT id, request_id, user_wallet, total_cost_far, platform_fee_far, platform_remainder_far
               FROM far_mesh_sessions
              WHERE id = ANY (p_session_ids) AND total_cost_far > 0
                AND NOT EXISTS (SELECT FROM far_journal_entries e
                                 WHERE e.kind = 'charge' AND e.reference = far_mesh_sessions.request_id)
              ORDER BY request_id
    LOOP
        accounts := ARRAY[coalesce('buyer:' || s.user_wallet, 'receivable:unattributed')];
        amounts := ARRAY[s.total_cost_far];
        SELECT accounts || coalesce(array_agg(far_provider_account(c.node_id) ORDER BY c.node_id), '{}'),
               amounts || coalesce(array_agg(-c.payment_far ORDER BY c.node_id), '{}')
          INTO accounts, amounts
          FROM far_session_contributions c
         WHERE c.session_id = s.id AND c.payment_far > 0;
        IF s.platform_fee_far > 0 THEN
            accounts := accounts || 'platform:fees'::TEXT;
            amounts := amounts || -s.platform_fee_far;
        END IF;
        IF s.platform_remainder_far > 0 THEN
            accounts := accounts || 'platform:remainder'::TEXT;
            amounts := amounts || -s.platform_remainder_far;
        END IF;
        PERFORM far_journal_post('charge', s.request_id, accounts, amounts,
                                 format('%s FAR for session %s', s.total_cost_far, s.request_id));
        posted := posted + 1;
    END LOOP;
    RETURN posted;
END $$;

-- The gateway admits requests against a buyer's balance (GATEWAY_REQUIRE_PREPAID_BALANCE, docs/budgets.md): it
-- reads the sum of a buyer account's lines, and nothing else of the journal.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'far_mesh_gateway') THEN
        GRANT SELECT (account, amount_far) ON far_journal_lines TO far_mesh_gateway;
    END IF;
END
$$;
