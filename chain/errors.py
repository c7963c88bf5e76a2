"""What can be wrong with the chain, each with a message that says what to do; none of them carries a key."""


class ChainError(RuntimeError):
    """The chain cannot be used for payouts as configured."""


class ChainUnreachable(ChainError):
    """The JSON-RPC node does not answer (down, wrong URL, network)."""


class ChainNodeFailed(ChainUnreachable):
    """The node answered a read with a JSON-RPC error instead of a result (one shutting down answers "Ganache is
    disconnected"; a proxy whose backend is away answers likewise): a read is safe to ask again, so every loop that
    waits out an unreachable node waits this out too, rather than exiting or halting on it."""


class WrongChain(ChainError):
    """The node serves another chain than CHAIN_ID: signing for it could pay on the wrong network."""


class ContractNotDeployed(ChainError):
    """No contract code at a configured address (a fresh node, or the wrong address)."""
