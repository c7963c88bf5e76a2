"""Everything that touches the EVM: the $FAR token and batch-transfer contracts (Solidity sources, compiled
offline by solc-js into `artifacts/`), deployment, balances, signing and the JSON-RPC calls of the payout
transaction lifecycle, and the local ganache node of development and tests.

`payouts` pays providers through this room (`payouts.payer.ChainPayer`), with its own settings
(`payouts.settings`); nothing here decides about ledger rows or batches, which stays in `payouts`. The deposit
watcher's and the reconciliation's settings (`DepositSettings`, `ReconcileSettings`) still join the chain's
with the ledger's here.
"""
