"""Wallets whose private keys are derived from a name, so a test node or a benchmark's node can sign as its owner.

Nobody's real money: each key is sha256 of a fixed phrase and the name.
"""

import functools
import hashlib

from eth_account import Account


def wallet_key_for(name: str) -> bytes:
    """The private key of `wallet_for(name)` (the one the portal tests' `SigningWallet.named(name)` holds): a test
    wallet can sign, so the node that announces it can be registered to it with real evidence."""
    return hashlib.sha256(f"far-mesh test wallet {name}".encode()).digest()


@functools.cache
def wallet_for(name: str) -> str:
    """The EIP-55 address of a key derived from `name`, so each test node has a wallet of its own."""
    return str(Account.from_key(wallet_key_for(name)).address)
