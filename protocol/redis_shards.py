"""Which Redis holds each model's requests: the one map every process routes by (FAR_MESH_MODEL_REDIS).

A model named in the map has its request traffic on its own Redis (its "shard"); every other model, and all
per-key and per-wallet state, stays on REDIS_URL (the "home" Redis). What goes where, and why:

- On the model's shard, everything whose load grows with the model's tokens and requests: its arq queue and job
  keys, its wake-up channel, each request's token stream, served steps, lease and cancel flag, and the usage
  stream its workers append each finished session to (in the same script as the stream's ending, so the two
  cannot part). Accounting consumes the usage stream of every Redis in the map.
- On home, what an API key, a wallet or the whole fleet owns, and what admission must check atomically: request
  owners (so a resume or a re-POSTed request id finds its model, hence its shard, from a record the client
  cannot choose), budgets, balances and holds, rate limits, concurrent-stream slots and the active-request leases
  written in the same script, batches and their files, swarm snapshots, prices, trust (bans, reputation, spot
  checks and their byte budget), peer measurements and the portal's keys. Each is written per request or per
  interval, never per token.

Unset, the map is empty and every process talks to REDIS_URL alone, exactly as before shards existed. The map
is pure data: each process opens its own connections (`gateway.shards`, the workers' context, accounting's
consumers) from it.
"""

from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RedisShards:
    """REDIS_URL (`home`) and the models whose requests live elsewhere (`by_model`: model id -> Redis URL)."""

    home: str
    by_model: dict[str, str] = field(default_factory=dict)

    def url_for(self, model_id: str) -> str:
        """The Redis that holds `model_id`'s queue, token streams and usage records."""
        return self.by_model.get(model_id, self.home)

    def is_home(self, model_id: str) -> bool:
        """True when `model_id`'s requests share the home Redis (every model, without a map)."""
        return self.url_for(model_id) == self.home

    @property
    def urls(self) -> tuple[str, ...]:
        """Every distinct Redis, home first: what accounting consumes a usage stream from."""
        seen = [self.home]
        for url in self.by_model.values():
            if url not in seen:
                seen.append(url)
        return tuple(seen)


def redacted(url: str) -> str:
    """`url` without its password, for logs and errors: `redis://host:port/db`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
