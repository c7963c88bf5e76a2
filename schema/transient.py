"""Which PostgreSQL errors pass by themselves: the ledger's long-running clients (the payer, the deposit watcher,
accounting's usage consumer, pricer, registry and reconciler, the verifier) retry a round that failed on one of
these, the gateway and the portal answer 503 for them, and the portal waits them out at start."""

import asyncpg

TRANSIENT_LEDGER_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # the connection was lost or refused
    asyncpg.InterfaceError,  # ... and noticed by the driver
    asyncpg.exceptions.InternalClientError,  # ... or left the driver's state mid-operation: PostgreSQL shut down
    # under a transaction, and its COMMIT found "another operation in progress" (the chaos soak, seed 32: the
    # deposit watcher exited twice and the payer halted twice); the next round opens a new connection
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, a statement cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock: run it again
)
"""Ledger errors that pass by themselves, so the next round is retried. Every other PostgreSQL error (a unique
or check constraint, a missing column) fails the same way each time it is tried."""

LEDGER_AWAY: tuple[type[Exception], ...] = (OSError, TimeoutError, *TRANSIENT_LEDGER_ERRORS)
"""What a ledger call raises while PostgreSQL is away, restarting or starting: the network's errors (a refusal, a
connection lost mid-handshake, a timeout) with the driver's transient ones. A process that waits for the ledger
waits these out."""
