"""Accounting: the usage-stream consumer that fills the $FAR ledger, the node registry, and payouts.

Nothing is imported here, so `far-mesh --help` does not load asyncpg or redis.
"""
