"""One member of a Redis consumer group: join the group, read, take over a dead member's entries, acknowledge.

Redis delivers each entry of the stream to one member of the group and keeps it pending, in that member's
name, until it is acknowledged; a member that dies leaves its entries pending, and another takes them over
once they have been idle long enough (XAUTOCLAIM). The consumers (accounting, the verifier) decide what is
done before an acknowledgement and how long idle means dead; this module is the Redis side they share:

- joining creates the group (and the stream) when missing, from the stream's first entry, and is idempotent:
  every member calls it at start, and Redis answers the second creation with the one error that means "it
  exists" (`BUSYGROUP`, recognised here and nowhere else);
- reading after a Redis that lost the group (restarted without its data, or the stream deleted) joins again
  and reads nothing this time, instead of failing on `NOGROUP` until someone restarts the process;
- an entry trimmed away while pending comes back with no fields on a read of the member's own pending
  entries (and on a claim before Redis 7, which since drops it itself): its id is still pending and must be
  acknowledged, and there is nothing to handle.
"""

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as read: its id and its fields (none: trimmed away while pending)."""

NEW = ">"
"""Read entries never delivered to any member (as opposed to this member's pending ones, after an id)."""
FIRST = "0-0"
"""Before every entry id: where a claim starts, and a read of the member's pending entries."""


def _says(exc: ResponseError, code: str) -> bool:
    """The error Redis answered starts with `code` (redis-py has no exception class for the stream errors)."""
    return str(exc).startswith(code)


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    """`consumer`, a member of `group` reading `stream`; the Redis client must not decode replies (ids are bytes)."""

    redis: aioredis.Redis
    stream: str
    group: str
    consumer: str

    async def join(self) -> None:
        """Create the group (and the stream) unless it exists; a new group starts before the stream's first entry."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if not _says(exc, "BUSYGROUP"):
                raise

    async def read(self, after: str = NEW, *, count: int, block_ms: int | None = None) -> list[Entry]:
        """Up to `count` entries: new ones (`after` = NEW), waiting up to `block_ms` for one (None: not at all), or
        this member's own pending entries after the id `after`. [] once the group was found missing (made again)."""
        try:
            reply: Any = await self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: after}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if not _says(exc, "NOGROUP"):
                raise
            await self.join()
            return []
        return [(entry_id, fields or {}) for _, entries in reply or [] for entry_id, fields in entries]

    async def claim(self, min_idle_ms: int, *, count: int, start: str = FIRST) -> tuple[str, list[Entry]]:
        """Take over up to `count` pending entries idle at least `min_idle_ms` (their member died, or is too slow),
        scanning from the id `start`; (the id to scan from next, FIRST once the scan went round, the entries)."""
        reply: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=min_idle_ms, start_id=start, count=count
        )
        cursor, claimed = reply[0], reply[1]
        next_start = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
        return next_start, [(entry_id, fields or {}) for entry_id, fields in claimed]

    async def ack(self, *entry_ids: bytes | str) -> None:
        """Acknowledge the entries: they are done with, and no member will be given them again."""
        if entry_ids:
            await self.redis.xack(self.stream, self.group, *entry_ids)
