"""The ledger's schema: SQL migrations (`NNNN_name.sql`, package data) and `schema.migrate`, which applies them.

Nothing is imported here, so `far-mesh --help` does not load asyncpg.
"""
