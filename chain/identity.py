"""Which chain a payout lives on: its chain id, its genesis block's hash, and the $FAR token it pays in.

A chain id does not identify a chain. A development node restarted fresh serves the same chain id with every
account's nonce back at 0, and a new deployment of the token on it may even land at the same address (the same
deployer, the same nonce). The genesis block tells them apart: two chains started apart have different ones
(ganache's genesis depends only on its options and the second it started, so `chain.node.LocalChain` gives
each fresh node a random `extraData`). The ledger records the identity with every batch it signs, so the
nonces of a reset chain are never mistaken for those of the chain before it.
"""

from dataclasses import dataclass


class ChainChanged(RuntimeError):
    """The node now serves another chain than the one the payer connected to (a reset, or another network
    behind the same URL): nothing more is signed until the payer is restarted and connects to it afresh."""


@dataclass(frozen=True)
class ChainIdentity:
    chain_id: int
    genesis_hash: str
    """`0x` and 64 lowercase hex digits: the hash of block 0."""
    token: str
    """The $FAR contract's address, checksummed."""

    def __str__(self) -> str:
        return f"chain {self.chain_id} (genesis {self.genesis_hash[:10]}…), token {self.token}"
