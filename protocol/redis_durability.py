"""What Redis must guarantee for nothing billed to be lost, checked by every process at start-up.

Redis holds the queued jobs, the token streams and the usage records not yet in the ledger. Without an
append-only file a restart loses all of them, and with an eviction policy a full Redis drops them one by one.
Required: `appendonly yes` with `appendfsync everysec` (or `always`), and `maxmemory-policy noeviction` (a
full Redis then refuses writes, which the processes report and retry, instead of silently dropping them).
A process that finds otherwise says so at start-up; with FAR_MESH_REDIS_REQUIRE_DURABLE=true it refuses to start.
"""

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from protocol.settings import SettingsError

log = logging.getLogger(__name__)

REQUIRED: Mapping[str, tuple[str, ...]] = {
    "appendonly": ("yes",),
    "appendfsync": ("everysec", "always"),
    "maxmemory-policy": ("noeviction",),
}
"""Each Redis setting that must hold, and the values that satisfy it."""

ConfigGet = Callable[[str], Awaitable[Mapping[Any, Any]]]
"""`redis.asyncio.Redis.config_get`: one setting's name -> {name: value}."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def durability_problems(config_get: ConfigGet) -> list[str]:
    """`setting=value (needs ...)` for each requirement the Redis behind `config_get` does not meet."""
    problems = []
    for name, accepted in REQUIRED.items():
        reply = {_text(k): _text(v) for k, v in (await config_get(name)).items()}
        value = reply.get(name, "unknown")
        if value not in accepted:
            problems.append(f"{name}={value} (needs {' or '.join(accepted)})")
    return problems


async def check_redis_durability(config_get: ConfigGet, *, require: bool) -> None:
    """Warn (or, when `require`, raise `SettingsError`) if Redis can lose what is not yet billed.

    A Redis that refuses CONFIG GET (some managed services do) or does not answer yet is only warned about.
    """
    try:
        problems = await durability_problems(config_get)
    except Exception as exc:  # redis-py's errors are not ours to import here; any failure means "unknown"
        log.warning("could not check that Redis is durable (%s); see README 'What Redis must guarantee'", exc)
        return
    if not problems:
        return
    message = (
        f"Redis is not durable: {', '.join(problems)}; a restart or eviction would lose queued jobs, "
        "token streams and usage records not yet billed (README: 'What Redis must guarantee')"
    )
    if require:
        raise SettingsError(f"FAR_MESH_REDIS_REQUIRE_DURABLE: {message}")
    log.warning(message)
