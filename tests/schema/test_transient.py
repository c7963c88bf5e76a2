"""schema.transient: which ledger errors the payer and the deposit watcher retry instead of stopping on."""

import asyncpg
import pytest

from schema.transient import TRANSIENT_LEDGER_ERRORS


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        # What a COMMIT raised when PostgreSQL shut down under the deposit watcher's transaction (the chaos soak,
        # seed 32): the watcher exited and the payer halted on it, though a new connection works.
        asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
    ],
)
def test_a_lost_or_shutting_down_database_is_retried(error: Exception) -> None:
    assert isinstance(error, TRANSIENT_LEDGER_ERRORS)


def test_an_error_that_fails_the_same_way_each_time_is_not_retried() -> None:
    assert not isinstance(asyncpg.exceptions.UniqueViolationError("duplicate key"), TRANSIENT_LEDGER_ERRORS)
    assert not isinstance(asyncpg.exceptions.UndefinedColumnError("no such column"), TRANSIENT_LEDGER_ERRORS)
