"""Everything that touches the EVM: the $FAR token and batch-transfer contracts (Solidity sources, compiled
offline by solc-js into `artifacts/`), deployment, balances, signing and the JSON-RPC calls of the payout
transaction lifecycle, and the local ganache node of development and tests.

`payouts` pays providers through this room (`payouts.payer.ChainPayer`), with its own settings
(`payouts.settings`), and `accounting` watches deposits and reconciles through it (`accounting.chain_settings`);
nothing here touches the ledger, so every decision about rows and batches stays in those rooms.
"""
