"""Route policy: keep banned peers out of a model's routes, and low-reputation peers out where others suffice.

Petals' sequence manager drops every server in its `blocked_servers` from the swarm view it routes over (unlike
its own temporary ban list, which it ignores when every server of a block is on it). Two kinds of peers go there:

- banned peers (the verifier's `trust:banned`): always, even if that leaves a block uncovered (the request then
  fails with no_route rather than paying a cheat);
- peers on probation (reputation below `PROBATION_BELOW` in `trust:reputation`; a new node starts below it):
  only when every block they hold is also held by a server in good standing, so preferring reputable servers
  never costs a route, nor a replica to fail over to. In good standing means scored at `PROBATION_BELOW` or
  more: a peer id with no score yet (one the ledger has not seen, which costs nothing to mint) stands in for no
  one.

The set is shared by every session of the model and re-applied only when it changes; the swarm's full view,
needed to judge redundancy, is read from the DHT at most every `_COVERAGE_TTL_S` and only while some peer is
on probation.
"""

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from mesh.client import reread_swarm
from protocol import keys
from workers.served_model import ServedModel

logger = logging.getLogger(__name__)

DEFAULT_POLICY = "default"
"""What a usage record says when no peer had to be avoided: Petals' own lowest-latency route."""
PROBATION_BELOW = 0.4
"""Reputation under which a server is routed to only where no better one holds its blocks."""
_COVERAGE_TTL_S = 10.0

_coverage: dict[int, tuple[float, list[set[str]]]] = {}
"""Per sequence manager: when the swarm's unfiltered view was read, and the servers online for each block."""


async def banned_peers(redis: aioredis.Redis) -> frozenset[str]:
    """Peers whose ban has not yet expired."""
    members = await redis.zrangebyscore(keys.BANNED_NODES, time.time(), "+inf")
    return frozenset(m.decode() if isinstance(m, bytes) else str(m) for m in members)


async def reputations(redis: aioredis.Redis) -> dict[str, float]:
    """Every peer the verifier scored, with its score."""
    scores: Mapping[Any, Any] = await redis.hgetall(keys.NODE_REPUTATION)  # type: ignore[misc]
    return {(node.decode() if isinstance(node, bytes) else str(node)): float(score) for node, score in scores.items()}


def redundant(servers_by_block: Sequence[set[str]], candidates: Sequence[str], excluded: frozenset[str]) -> set[str]:
    """The candidates that can be avoided with every block they hold still held by a server in good standing
    (neither excluded nor itself a candidate). One candidate is never avoided in favour of another: when every
    holder of a block is on probation (a young swarm), blocking some would leave Petals a single server to route
    through, and nothing to fail over to once that one dies."""
    trusted = [servers - excluded - set(candidates) for servers in servers_by_block]
    return {
        peer
        for peer in candidates
        if (held := [good for servers, good in zip(servers_by_block, trusted, strict=True) if peer in servers])
        and all(held)
    }


def _blocked(manager: Any) -> frozenset[str]:
    return frozenset(peer.to_base58() for peer in (manager.blocked_servers or ()))


def _servers_by_block(manager: Any) -> list[set[str]]:
    """Every online server of each block, as the DHT announces them (before any block list); blocking: one DHT read,
    TimeoutError after the client's request timeout, as `mesh.session_routes.held_back_spans` reads it. Unbounded,
    a read handed to a client whose DHT process died held its pool thread for ever."""
    from mesh.compat import petals

    cached = _coverage.get(id(manager))
    if cached is not None and time.monotonic() - cached[0] < _COVERAGE_TTL_S:
        return cached[1]
    online = petals.data_structures.ServerState.ONLINE
    read = petals.utils.dht.get_remote_module_infos(manager.dht, manager.block_uids, latest=True, return_future=True)
    infos = read.result(manager.config.request_timeout)
    view = [{peer.to_base58() for peer, info in block.servers.items() if info.state == online} for block in infos]
    _coverage[id(manager)] = (time.monotonic(), view)
    return view


def choose_blocked(served: ServedModel, banned: frozenset[str], scores: Mapping[str, float]) -> frozenset[str]:
    """The peers to keep out of routes (blocking: reads the DHT when some peer is on probation, for at most the
    client's request timeout, past which no peer on probation is kept out).

    A server this client could not reach (on Petals' temporary ban list, as `MeshClient.refresh_routes` puts a
    dead one) is in good standing with no one: the DHT announces a killed server online for minutes, and counting
    it would keep its replica on probation blocked, leaving Petals only the dead server to route through.
    """
    low = {peer: score for peer, score in scores.items() if score < PROBATION_BELOW}
    candidates = sorted((peer for peer in low if peer not in banned), key=lambda peer: low[peer])
    if not candidates:
        return banned
    manager = served.model.transformer.h.sequence_manager
    try:
        view = _servers_by_block(manager)
    except TimeoutError:
        # No blocking, rather than failing the route choice: without the swarm's view no candidate can be shown to
        # be redundant, and keeping one out that is not could cost a route, which probation never may. The bans
        # need no view and still apply (failing here would drop a new ban along with the preference).
        logger.warning(
            "peers on probation not avoided model=%s: the swarm's view was not read in time", served.model_id
        )
        return banned
    unscored = frozenset(peer for servers in view for peer in servers if peer not in scores)
    return banned | redundant(view, candidates, banned | unscored | _unreachable(manager, view))


def _unreachable(manager: Any, view: Sequence[set[str]]) -> frozenset[str]:
    """The servers of `view` on the client's temporary ban list."""
    from hivemind.p2p import PeerID

    return frozenset(
        peer for servers in view for peer in servers if PeerID.from_base58(peer) in manager.state.banned_peers
    )


def apply_blocked(served: ServedModel, blocked: frozenset[str]) -> bool:
    """Make `blocked` the model's blocked servers and re-read the swarm if that changed them (blocking, at most the
    client's request timeout: `mesh.client.reread_swarm`; a TimeoutError is a failed policy, which the run's callers
    log and go on without)."""
    from hivemind.p2p import PeerID

    manager = served.model.transformer.h.sequence_manager
    if _blocked(manager) == blocked:
        return False
    manager.blocked_servers = {PeerID.from_base58(peer) for peer in blocked} or None
    reread_swarm(manager)
    return True


def _plan(served: ServedModel, banned: frozenset[str], scores: Mapping[str, float]) -> frozenset[str]:
    blocked = choose_blocked(served, banned, scores)
    apply_blocked(served, blocked)
    return blocked


_refused_ids: set[str] = set()
"""Entries already logged as not being peer ids (each is said once, not once per request)."""


def peer_ids_only(peers: Iterable[str]) -> set[str]:
    """The entries that parse as libp2p peer ids. Bans and scores come from the ledger, where a node id is any
    text a usage record or a test wrote; one that is not a peer id must not stop every route from being planned."""
    from hivemind.p2p import PeerID

    valid = set()
    for peer in peers:
        try:
            PeerID.from_base58(peer)
        except ValueError:
            if peer not in _refused_ids:
                _refused_ids.add(peer)
                logger.warning("ignoring a banned or scored node that is not a peer id node_id=%r", peer[:80])
            continue
        valid.add(peer)
    return valid


async def apply_route_policy(redis: aioredis.Redis, served: ServedModel) -> str:
    """Bring the model's routes in line with bans and reputations; returns the policy to record with the session."""
    banned_raw, scored = await asyncio.gather(banned_peers(redis), reputations(redis))
    banned = frozenset(peer_ids_only(banned_raw))
    scores = {peer: scored[peer] for peer in peer_ids_only(scored)}
    manager = served.model.transformer.h.sequence_manager
    if any(score < PROBATION_BELOW for peer, score in scores.items() if peer not in banned):
        blocked = await served.run_blocking(_plan, served, banned, scores)
    else:
        blocked = banned
        if _blocked(manager) != banned:
            await served.run_blocking(apply_blocked, served, banned)
    parts = []
    if banned:
        parts.append(f"avoid-banned:{len(banned)}")
    if blocked - banned:
        parts.append(f"avoid-low-reputation:{len(blocked - banned)}")
    return ",".join(parts) or DEFAULT_POLICY
