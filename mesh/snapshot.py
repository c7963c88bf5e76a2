"""Reading one model's swarm from the DHT into a `SwarmSnapshot`, the way Petals' health monitor sees it.

Each block uid is `"{dht_prefix}.{index}"`; every server announces the span it holds under those uids, with
its state, throughput and public name (which carries the node's wallet, see `mesh.announce`).
"""

from datetime import UTC, datetime
from typing import Any

from mesh.announce import wallet_from_public_name
from protocol.swarm import ServerSnapshot, SwarmSnapshot


def block_uids(dht_prefix: str, num_blocks: int) -> list[str]:
    return [f"{dht_prefix}.{index}" for index in range(num_blocks)]


READ_TIMEOUT_S = 30.0
"""A DHT read answers in milliseconds on loopback and seconds across the internet. Without a bound, a read in
flight when the client's DHT is shut down waits forever, and its thread keeps the process from exiting."""


def read_swarm_snapshot(
    dht: Any, model_id: str, dht_prefix: str, num_blocks: int, *, timeout_s: float = READ_TIMEOUT_S
) -> SwarmSnapshot:
    """Ask the DHT who holds which blocks of the model now (blocking: a DHT round trip); TimeoutError when the
    DHT does not answer within `timeout_s`."""
    from mesh.compat import petals

    uids = block_uids(dht_prefix, num_blocks)
    infos = petals.utils.dht.get_remote_module_infos(dht, uids, latest=True, return_future=True).result(timeout_s)
    spans = petals.utils.dht.compute_spans(infos, min_state=petals.data_structures.ServerState.OFFLINE)
    servers = []
    for peer_id, span in sorted(spans.items(), key=lambda item: (item[1].start, str(item[0]))):
        info = span.server_info
        servers.append(
            ServerSnapshot(
                peer_id=str(peer_id),
                public_name=info.public_name,
                wallet=wallet_from_public_name(info.public_name),
                start_block=span.start,
                end_block=span.end,
                throughput=float(info.throughput),
                state=info.state.name.lower(),
                cache_tokens_left=info.cache_tokens_left,
            )
        )
    return SwarmSnapshot(
        model_id=model_id,
        dht_prefix=dht_prefix,
        num_blocks=num_blocks,
        taken_at=datetime.now(UTC),
        servers=tuple(servers),
    )
