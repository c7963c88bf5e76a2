"""Route policy: keep banned peers out of a model's routes, as the verifier's bans in Redis say.

Petals' sequence manager drops every server in its `blocked_servers` from the swarm view it routes over (unlike
its own temporary ban list, which it ignores when every server of a block is on it): a banned cheat is never
routed to, even if that leaves a block uncovered (the request then fails with no_route rather than paying a
cheat). The set is shared by every session of the model and re-applied only when the bans change.
"""

import time
from typing import Any

import redis.asyncio as aioredis

from protocol import keys
from workers.served_model import ServedModel

DEFAULT_POLICY = "default"
"""What a usage record says when no peer had to be avoided: Petals' own lowest-latency route."""


async def banned_peers(redis: aioredis.Redis) -> frozenset[str]:
    """Peers whose ban has not yet expired."""
    members = await redis.zrangebyscore(keys.BANNED_NODES, time.time(), "+inf")
    return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)


def _blocked(manager: Any) -> frozenset[str]:
    return frozenset(peer.to_base58() for peer in (manager.blocked_servers or ()))


def apply_bans(served: ServedModel, banned: frozenset[str]) -> bool:
    """Make `banned` the model's blocked servers and re-read the swarm if that changed them (blocking)."""
    from hivemind.p2p import PeerID

    manager = served.model.transformer.h.sequence_manager
    if _blocked(manager) == banned:
        return False
    manager.blocked_servers = {PeerID.from_base58(peer) for peer in banned} or None
    manager.update(wait=True)
    return True


async def apply_route_policy(redis: aioredis.Redis, served: ServedModel) -> str:
    """Bring the model's routes in line with the current bans; returns the policy to record with the session."""
    banned = await banned_peers(redis)
    if _blocked(served.model.transformer.h.sequence_manager) != banned:
        await served.run_blocking(apply_bans, served, banned)
    return f"avoid-banned:{len(banned)}" if banned else DEFAULT_POLICY
