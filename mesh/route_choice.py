"""Choosing a route through a model's blocks by a buyer's preferences: which servers may serve, and how to rank.

Pure functions over plain values (no Petals), so the choice is unit-tested exactly and the per-session view of
the sequence manager (`mesh.session_routes`) only has to feed it the client's swarm view and pings.

A route is a chain of hops; each hop runs blocks [start, end) on one server. The cheapest chain is found by
dynamic programming over block indices (a hop always runs to the end of its server's span or of the range, as
Petals' own router does), with a cost per hop that depends on the sort:

- `latency` (and no sort): the hop's measured round trip (every hop is a client round trip: server-to-server
  handoff is off, `mesh.client.NO_HANDOFF`) plus Petals' serialisation overhead, plus blocks / inference steps
  per second the server announces. The same estimate as Petals' min-latency router.
- `throughput`: blocks x the seconds per block of a decode step workers measured through the server
  (`mesh.peer_speed`; the round trip included): the route that gets a token through fastest by evidence. The
  throughput a server announces is a claim anyone can inflate and is not used; a server never measured counts as
  the median of the measured candidates (`unknown_decode_s`), neither preferred nor shunned, so it still gets
  traffic to be measured by; ties go to fewer hops, then to the nearer server.
- `price`: every route of a model costs the buyer the same (the price is per model, fixed at admission), so
  routes are ranked as for `latency`.
"""

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

OVERHEAD_S = 0.018
"""Serialisation per hop, as Petals measured it (`RemoteSequenceManager._build_inference_graph`)."""
UNKNOWN_RTT_S = 0.15
"""The round trip assumed for a server not pinged yet (Petals' default delay)."""
UNREACHABLE_RTT_S = 5.0
"""A server whose ping went unanswered: kept as a last resort, as Petals keeps it, not dropped."""
UNKNOWN_RPS = 300.0
"""Inference steps per second assumed when a server announces none (Petals' default)."""
UNMEASURED_DECODE_S = 0.01
"""Seconds per block assumed for every server when no candidate of a route was measured yet: any equal figure
would do (then fewer hops, and the nearer server, win)."""
ALLOC_PENALTY_S = 10.0
"""Added to a hop whose server announces too little attention cache left for the session, as Petals adds it."""


@dataclass(frozen=True)
class Candidate:
    """One server's span of the model, with what is known of it."""

    peer_id: str
    start: int
    end: int
    wallet: str | None = None
    """The wallet it announces (`mesh.announce`), for `only`/`ignore` by wallet."""
    rtt_s: float | None = None
    """Measured round trip; None: never measured; math.inf: did not answer."""
    inference_rps: float | None = None
    cache_tokens_left: int | None = None
    """What the server announces it can still hold; None: unknown (assumed enough)."""
    decode_s_per_block: float | None = None
    """Seconds per block of a one-token step through the server, as workers timed it; None: never measured."""

    def lacks_cache_for(self, cache_tokens_needed: int | None) -> bool:
        """Petals' pessimistic test: the session's tokens, keys and values, in every block of the server's span."""
        if cache_tokens_needed is None or self.cache_tokens_left is None:
            return False
        return cache_tokens_needed * 2 * (self.end - self.start) > self.cache_tokens_left


@dataclass(frozen=True)
class Hop:
    """Blocks [start, end) of a route, run on `candidate`'s server."""

    candidate: Candidate
    start: int
    end: int


@dataclass
class RouteRule:
    """Which servers a request may use: never `ignore`d ones (peer ids or wallets), only `only` ones when set,
    and once `pinned` (allow_fallbacks false, after the first route) only those."""

    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    sort: str | None = None
    min_reputation: float | None = None
    reputations: Mapping[str, float] = field(default_factory=dict)
    """Peer id -> the verifier's score; a peer absent from it counts as 0."""
    pin_first_route: bool = False
    pinned: frozenset[str] | None = None

    def allows(self, candidate: Candidate) -> bool:
        names = {candidate.peer_id} | ({candidate.wallet} if candidate.wallet else set())
        if names & self.ignore:
            return False
        if self.only is not None and not names & self.only:
            return False
        if self.min_reputation is not None and self.reputations.get(candidate.peer_id, 0.0) < self.min_reputation:
            return False
        return self.pinned is None or candidate.peer_id in self.pinned

    def chose(self, route: Sequence[Hop]) -> None:
        """Note a route taken: with `pin_first_route`, the first one's servers are the only ones from now on."""
        if self.pin_first_route and self.pinned is None:
            self.pinned = frozenset(hop.candidate.peer_id for hop in route)


class RouteUnsatisfiable(RuntimeError):
    """The request's preferences leave these blocks without a server."""

    def __init__(self, blocks: Sequence[int], why: str = "") -> None:
        self.blocks = list(blocks)
        self.why = why
        super().__init__(f"no allowed server holds blocks {block_ranges(self.blocks)}{why}")


def block_ranges(blocks: Sequence[int]) -> str:
    """[2, 3, 4, 7] -> "2..4, 7"."""
    parts: list[str] = []
    for block in blocks:
        if parts and block == int(parts[-1].rsplit(".", 1)[-1]) + 1:
            first = parts[-1].split(".", 1)[0]
            parts[-1] = f"{first}..{block}"
        else:
            parts.append(str(block))
    return ", ".join(parts)


def uncovered(candidates: Collection[Candidate], start: int, end: int) -> list[int]:
    """The blocks of [start, end) no candidate holds."""
    return [block for block in range(start, end) if not any(c.start <= block < c.end for c in candidates)]


def _rtt(candidate: Candidate) -> float:
    if candidate.rtt_s is None:
        return UNKNOWN_RTT_S
    return min(candidate.rtt_s, UNREACHABLE_RTT_S)


def unknown_decode_s(candidates: Collection[Candidate]) -> float:
    """The figure a never-measured server counts as: the median of the measured candidates' (the middle one of
    what this swarm shows, so an unmeasured server is neither the favourite nor the last resort), or
    UNMEASURED_DECODE_S when none was measured."""
    measured = sorted(c.decode_s_per_block for c in candidates if c.decode_s_per_block is not None)
    if not measured:
        return UNMEASURED_DECODE_S
    middle = len(measured) // 2
    return measured[middle] if len(measured) % 2 else (measured[middle - 1] + measured[middle]) / 2


def _latency_cost(candidate: Candidate, blocks: int, unknown_decode: float) -> float:
    return _rtt(candidate) + OVERHEAD_S + blocks / (candidate.inference_rps or UNKNOWN_RPS)


def _throughput_cost(candidate: Candidate, blocks: int, unknown_decode: float) -> float:
    decode_s = candidate.decode_s_per_block if candidate.decode_s_per_block is not None else unknown_decode
    # the tiny per-hop term breaks ties towards fewer hops, then towards the nearer server
    return blocks * decode_s + 1e-9 * (1 + _rtt(candidate))


COSTS: Mapping[str | None, Callable[[Candidate, int, float], float]] = {
    None: _latency_cost,
    "latency": _latency_cost,
    "price": _latency_cost,
    "throughput": _throughput_cost,
}


def choose_route(
    candidates: Sequence[Candidate],
    start: int,
    end: int,
    sort: str | None = None,
    *,
    cache_tokens_needed: int | None = None,
) -> list[Hop]:
    """The cheapest chain of hops covering blocks [start, end) by `sort`'s cost (a server short of attention cache
    for `cache_tokens_needed` costs ALLOC_PENALTY_S more); RouteUnsatisfiable naming the blocks no candidate holds.
    Ties go to the lower peer id, so the choice is deterministic."""
    if start >= end:
        return []
    missing = uncovered(candidates, start, end)
    if missing:
        raise RouteUnsatisfiable(missing)
    cost_of = COSTS[sort]
    unknown_decode = unknown_decode_s(candidates)
    ordered = sorted(candidates, key=lambda c: (c.peer_id, c.start))
    best: list[float] = [math.inf] * (end - start + 1)
    via: list[tuple[int, Candidate] | None] = [None] * (end - start + 1)
    best[0] = 0.0
    for i in range(start, end):
        if best[i - start] == math.inf:
            continue
        for candidate in ordered:
            if not candidate.start <= i < candidate.end:
                continue
            j = min(candidate.end, end)
            cost = best[i - start] + cost_of(candidate, j - i, unknown_decode)
            if candidate.lacks_cache_for(cache_tokens_needed):
                cost += ALLOC_PENALTY_S
            if cost < best[j - start]:
                best[j - start], via[j - start] = cost, (i, candidate)
    if best[end - start] == math.inf:  # every block is held, but no chain of spans ends exactly at `end`
        raise RouteUnsatisfiable([end - 1])
    hops: list[Hop] = []
    j = end
    while j > start:
        step = via[j - start]
        assert step is not None
        i, candidate = step
        hops.append(Hop(candidate, i, j))
        j = i
    return hops[::-1]
