-- Providers of under-served blocks earn a premium (#30, docs/pricing.md): a job priced while a block was thin
-- carries each block's weight in basis points, fixed at admission, and its providers share the session's cost less
-- the platform's fee by work weighed by those premiums rather than by plain work. Each contribution records the
-- weighed work it was paid on, so its payment is reproducible: payment = (cost - fee) x paid_work_units /
-- sum(paid_work_units), rounded down to 18 decimals. NULL: paid on work_units, every block at par (sessions
-- without premiums, and every session before this migration). The balance the ledger already holds is unchanged:
-- payments + fee + remainder = cost (schema/0019).

ALTER TABLE far_session_contributions
    ADD COLUMN paid_work_units BIGINT CHECK (paid_work_units >= work_units * 10000);
