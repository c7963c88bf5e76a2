"""Everything that touches the EVM: the $FAR token and batch-transfer contracts (Solidity sources, compiled
offline by solc-js into `artifacts/`), deployment, balances, signing and the JSON-RPC calls of the payout
transaction lifecycle, and the local ganache node of development and tests.

`accounting` pays providers through this room (`accounting.payer.ChainPayer`); nothing here touches the
ledger, so every decision about rows and batches stays in `accounting`.
"""
