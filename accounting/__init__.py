"""Accounting: the usage-stream consumer that fills the $FAR ledger, the node registry, deposits and
the books (reconciliation). Paying providers is `payouts`, a room of its own.

Nothing is imported here, so `far-mesh --help` does not load asyncpg or redis.
"""
