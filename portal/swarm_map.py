"""The swarm as the workers last saw it: block coverage per model, and where a new node would help most.

Read from the snapshots workers publish in Redis (`protocol.swarm.read_swarm_snapshots`); a snapshot older than
`SNAPSHOT_MAX_AGE_S` is shown as stale, never as a live swarm. Onboarding picks the longest run of the
least-served blocks and prints the exact `far-mesh node` command (and container line) that would serve them.
"""

import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protocol.swarm import SwarmSnapshot


def swarm_map(snapshot: SwarmSnapshot, now: datetime | None = None) -> dict[str, Any]:
    """One model's coverage: per block how many online servers hold it, per server its span; healthy iff all held."""
    now = now or datetime.now(UTC)
    fresh = snapshot.is_fresh(now)
    return {
        "model_id": snapshot.model_id,
        "num_blocks": snapshot.num_blocks,
        "taken_at": snapshot.taken_at.isoformat(),
        "fresh": fresh,
        "healthy": fresh and snapshot.healthy,
        "active_nodes": snapshot.active_nodes,
        "block_coverage": snapshot.block_coverage,
        "servers": [
            {
                "peer_id": s.peer_id,
                "public_name": s.public_name,
                "wallet": s.wallet,
                "start_block": s.start_block,
                "end_block": s.end_block,
                "throughput": s.throughput,
                "state": s.state,
                "cache_tokens_left": s.cache_tokens_left,
            }
            for s in sorted(snapshot.servers, key=lambda s: (s.start_block, s.peer_id))
        ],
    }


@dataclass(frozen=True)
class Suggestion:
    start_block: int
    end_block: int
    coverage: int
    """Online servers holding each of these blocks now (the least over the model)."""


def under_served(coverage: list[int]) -> Suggestion:
    """The longest run of blocks at the lowest coverage (the first such run when several tie)."""
    lowest = min(coverage)
    best = (0, 0)
    start: int | None = None
    for block, count in enumerate([*coverage, lowest + 1]):
        if count == lowest and start is None:
            start = block
        elif count != lowest and start is not None:
            if block - start > best[1] - best[0]:
                best = (start, block)
            start = None
    return Suggestion(best[0], best[1], lowest)


def onboarding(
    snapshot: SwarmSnapshot | None,
    *,
    model_id: str,
    num_blocks: int | None,
    wallet: str | None,
    initial_peers: str,
    image: str,
) -> dict[str, Any]:
    """What to serve for `model_id` and the commands that serve it."""
    if snapshot is not None:
        coverage = snapshot.block_coverage
    elif num_blocks:
        coverage = [0] * num_blocks
    else:
        coverage = []
    suggestion = under_served(coverage) if coverage else None
    argv = ["far-mesh", "node", "--wallet", wallet or "0xYOUR_WALLET", "--model", model_id]
    argv += ["--initial-peers", *(initial_peers.split(",") if initial_peers else ["/ip4/SWARM_DHT/tcp/PORT/p2p/PEER"])]
    if suggestion is not None:
        argv += ["--blocks", f"{suggestion.start_block}:{suggestion.end_block}"]
    command = shlex.join(argv)
    return {
        "model_id": model_id,
        "fresh": snapshot is not None and snapshot.is_fresh(datetime.now(UTC)),
        "block_coverage": coverage,
        "suggested_blocks": None
        if suggestion is None
        else {
            "start_block": suggestion.start_block,
            "end_block": suggestion.end_block,
            "coverage": suggestion.coverage,
        },
        "command": command,
        "container": f"docker run --gpus all --network host {shlex.quote(image)} {shlex.join(argv[1:])}",
    }
