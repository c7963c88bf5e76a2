"""Where the Batch API's files and batches live: Redis, each buyer seeing only its own.

Why Redis and not the ledger: a batch is work in flight, like a queued job, and its lines' dispatch must be
decided atomically beside the queue they go on (`gateway.batch_runner`); its files are working data with an
expiry (GATEWAY_BATCH_FILE_TTL_S), never money. What a batch cost is in the ledger already, one session per
line, under the line's request id. Redis's durability (append-only file, `noeviction`) is what the rest of the
coordinator relies on too; a file's size is capped (GATEWAY_BATCH_MAX_FILE_BYTES) so files cannot crowd out the
queues.

A file is a hash: `meta` (its OpenAI file object, as JSON), `owner` (the API key id) and `content` (its JSONL).
A batch is a hash: `meta` (its OpenAI batch object), `owner`, `cancel` (the time a cancel was asked for, once it
was), `cursor` (lines dispatched so far), `pending` (line index -> time dispatched, for lines not yet collected)
and one `r:<index>` field per finished line holding its output or error line. Only the runner writes `meta`,
`cursor`, `pending` and results once the batch exists; a cancel only sets `cancel`.
"""

import json
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.errors import NotFound
from protocol import keys

INPUT_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
COMPLETION_WINDOW_S = 24 * 3600
"""The one completion window offered ("24h", as OpenAI): a batch still running then expires."""
ACTIVE_STATUSES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})


_FILE_ID = re.compile(r"file-[0-9a-f]{32}")
_BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")
"""The ids this store issues. An id from a URL is looked up only when it has that shape: appended to its key
prefix as it came, it could name another of the store's keys (the runner's lock, a batch's lines, a file)."""


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def line_request_id(batch_id: str, index: int) -> str:
    """The request id line `index` of `batch_id` runs under, the same on every dispatch: a re-dispatch after a
    crash finds the request already owned (or in the ledger) and never runs or bills it twice."""
    return f"breq_{batch_id.removeprefix('batch_')}_{index}"


def result_field(index: int) -> str:
    return f"r:{index}"


COMPLETED_FIELD = "completed"
FAILED_FIELD = "failed"
_SAVE_RESULT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
  return 1
end
return 0
"""


@dataclass(frozen=True)
class StoredBatch:
    meta: dict[str, Any]
    owner: str
    cancel_at: int | None
    cursor: int
    pending: dict[int, float]
    completed: int = 0
    failed: int = 0


class BatchStore:
    """Files and batches of every buyer, in Redis (`redis` decodes responses)."""

    def __init__(self, redis: aioredis.Redis, *, file_ttl_s: int) -> None:
        self.redis = redis
        self.file_ttl_s = file_ttl_s

    async def put_file(self, owner: str, filename: str, purpose: str, content: str) -> dict[str, Any]:
        now = int(time.time())
        file_id = new_file_id()
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content.encode()),
            "created_at": now,
            "expires_at": now + self.file_ttl_s,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch_file(file_id), mapping={"meta": json.dumps(meta), "owner": owner, "content": content})
            pipe.expire(keys.batch_file(file_id), self.file_ttl_s)
            pipe.zadd(keys.batch_files_of(owner), {file_id: now})
            await pipe.execute()
        return meta

    async def file(self, owner: str, file_id: str) -> dict[str, Any]:
        """The file's object; 404 when it does not exist or belongs to another key (never saying which)."""
        if not _FILE_ID.fullmatch(file_id):
            raise NotFound(f"no file {file_id!r}", field="file_id")
        meta, stored_owner = await self.redis.hmget(keys.batch_file(file_id), ["meta", "owner"])  # type: ignore[misc]
        if meta is None or stored_owner != owner:
            raise NotFound(f"no file {file_id!r}", field="file_id")
        result: dict[str, Any] = json.loads(meta)
        return result

    async def content(self, owner: str, file_id: str) -> str:
        await self.file(owner, file_id)
        text = await self.redis.hget(keys.batch_file(file_id), "content")  # type: ignore[misc]
        if text is None:
            raise NotFound(f"no file {file_id!r}", field="file_id")
        return str(text)

    async def files(self, owner: str, *, purpose: str | None, limit: int, after: str | None) -> list[dict[str, Any]]:
        """`owner`'s files, newest first, after the id `after`; expired ones are dropped from its index."""
        ids = await self.redis.zrevrange(keys.batch_files_of(owner), 0, -1)
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]
        found: list[dict[str, Any]] = []
        for file_id in ids:
            meta = await self.redis.hget(keys.batch_file(file_id), "meta")  # type: ignore[misc]
            if meta is None:
                await self.redis.zrem(keys.batch_files_of(owner), file_id)
                continue
            item = json.loads(meta)
            if purpose is None or item["purpose"] == purpose:
                found.append(item)
            if len(found) > limit:
                break
        return found

    async def delete_file(self, owner: str, file_id: str) -> None:
        await self.file(owner, file_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.batch_file(file_id))
            pipe.zrem(keys.batch_files_of(owner), file_id)
            await pipe.execute()

    async def create_batch(self, owner: str, meta: dict[str, Any], lines: Sequence[str]) -> None:
        """Store a new batch and its admitted lines; an in-progress one becomes the runner's at once."""
        batch_id = meta["id"]
        async with self.redis.pipeline(transaction=True) as pipe:
            if lines:
                pipe.rpush(keys.batch_lines(batch_id), *lines)
            pipe.hset(
                keys.batch(batch_id),
                mapping={"meta": json.dumps(meta), "owner": owner, "cursor": 0, "pending": "{}"},
            )
            pipe.zadd(keys.batches_of(owner), {batch_id: meta["created_at"]})
            if meta["status"] in ACTIVE_STATUSES:
                pipe.sadd(keys.BATCHES_ACTIVE, batch_id)
            else:
                self._expire_batch(pipe, batch_id)
            await pipe.execute()

    def _expire_batch(self, pipe: Any, batch_id: str) -> None:
        """A finished batch is kept as long as its files."""
        pipe.expire(keys.batch(batch_id), self.file_ttl_s)
        pipe.delete(keys.batch_lines(batch_id))

    async def stored(self, batch_id: str) -> StoredBatch | None:
        fields = ["meta", "owner", "cancel", "cursor", "pending", COMPLETED_FIELD, FAILED_FIELD]
        meta, owner, cancel, cursor, pending, completed, failed = await self.redis.hmget(  # type: ignore[misc]
            keys.batch(batch_id), fields
        )
        if meta is None:
            return None
        return StoredBatch(
            meta=json.loads(meta),
            owner=owner,
            cancel_at=None if cancel is None else int(cancel),
            cursor=int(cursor or 0),
            pending={int(k): float(v) for k, v in json.loads(pending or "{}").items()},
            completed=int(completed or 0),
            failed=int(failed or 0),
        )

    async def batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        """The batch's object as its owner sees it; 404 for another key's."""
        stored = await self.stored(batch_id) if _BATCH_ID.fullmatch(batch_id) else None
        if stored is None or stored.owner != owner:
            raise NotFound(f"no batch {batch_id!r}", field="batch_id")
        return shown(stored)

    async def batches(self, owner: str, *, limit: int, after: str | None) -> list[dict[str, Any]]:
        ids = await self.redis.zrevrange(keys.batches_of(owner), 0, -1)
        if after is not None and after in ids:
            ids = ids[ids.index(after) + 1 :]
        found = []
        for batch_id in ids:
            stored = await self.stored(batch_id)
            if stored is None:
                await self.redis.zrem(keys.batches_of(owner), batch_id)
                continue
            found.append(shown(stored))
            if len(found) > limit:
                break
        return found

    async def cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        """Ask the runner to stop `batch_id`: no new line starts, those running finish and are in its output."""
        await self.batch(owner, batch_id)
        await self.redis.hsetnx(keys.batch(batch_id), "cancel", str(int(time.time())))  # type: ignore[misc]
        return await self.batch(owner, batch_id)

    # the runner's side

    async def active(self) -> list[str]:
        return sorted(await self.redis.smembers(keys.BATCHES_ACTIVE))  # type: ignore[misc]

    async def line(self, batch_id: str, index: int) -> str | None:
        raw = await self.redis.lindex(keys.batch_lines(batch_id), index)  # type: ignore[misc]
        return None if raw is None else str(raw)

    async def save_progress(self, batch_id: str, meta: dict[str, Any], cursor: int, pending: dict[int, float]) -> None:
        await self.redis.hset(  # type: ignore[misc]
            keys.batch(batch_id),
            mapping={"meta": json.dumps(meta), "cursor": cursor, "pending": json.dumps(pending)},
        )

    async def save_result(self, batch_id: str, index: int, line: str, *, ok: bool) -> bool:
        """Line `index`'s output or error line, and its count, once: False when it was already saved (a runner
        that died after saving it and before clearing it from `pending`), and then nothing is counted again."""
        counter = COMPLETED_FIELD if ok else FAILED_FIELD
        saved = await self.redis.eval(_SAVE_RESULT, 1, keys.batch(batch_id), result_field(index), line, counter)  # type: ignore[misc]
        return bool(saved)

    async def results(self, batch_id: str, total: int) -> list[str | None]:
        if total == 0:
            return []
        values = await self.redis.hmget(keys.batch(batch_id), [result_field(i) for i in range(total)])  # type: ignore[misc]
        return [None if v is None else str(v) for v in values]

    async def finish(self, batch_id: str, meta: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(batch_id), mapping={"meta": json.dumps(meta), "pending": "{}"})
            pipe.srem(keys.BATCHES_ACTIVE, batch_id)
            self._expire_batch(pipe, batch_id)
            await pipe.execute()


def shown(stored: StoredBatch) -> dict[str, Any]:
    """The batch as the API shows it: cancelling from the moment a cancel was asked for."""
    meta = dict(stored.meta)
    if meta["status"] in ACTIVE_STATUSES:
        meta["request_counts"] = {**meta["request_counts"], "completed": stored.completed, "failed": stored.failed}
    if stored.cancel_at is not None and meta["status"] in ACTIVE_STATUSES:
        meta["status"] = "cancelling"
        meta["cancelling_at"] = meta.get("cancelling_at") or stored.cancel_at
    return meta
