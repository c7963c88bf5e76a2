"""The ledger as the durable record of every request id that ever ran.

Redis forgets a request once its stream and owner key expire (or on data loss), but its session stays in
`far_mesh_sessions` for good: a client-chosen request id found there must never start the swarm again, since
the second run's usage record would be a duplicate of the first and go unbilled.
"""

import asyncpg

from gateway.api_keys import LEDGER_UNREACHABLE, KeyStoreUnavailable

_USED = "SELECT EXISTS (SELECT 1 FROM far_mesh_sessions WHERE request_id = $1)"


class RequestHistory:
    """`used(request_id)`: has the ledger billed a session for this id?"""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    async def used(self, request_id: str) -> bool:
        try:
            return bool(await self._pool.fetchval(_USED, request_id, timeout=self._timeout_s))
        except LEDGER_UNREACHABLE as exc:
            raise KeyStoreUnavailable(f"the ledger did not answer: {type(exc).__name__}") from exc
