"""Payouts: paying providers' earnings (and buyers' withdrawals) in $FAR, the process `far-mesh payouts serve`.

One room for one process and its policy: which rows are payable (`payable`), how they are claimed into batches and
every step recorded (`batches`), the payers that move the money (`payer`: on chain, or a file for manual
signing), settling a batch by hand (`resolve`), the settings (`settings`, PAYOUT_*) and metrics. It sits
beside `accounting` (which fills the ledger it pays from) and uses `chain` for everything on the EVM.

Nothing is imported here, so `far-mesh --help` does not load asyncpg or web3.
"""
