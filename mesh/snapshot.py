"""Reading one model's swarm from the DHT into a `SwarmSnapshot`, the way Petals' health monitor sees it.

Each block uid is `"{dht_prefix}.{index}"`; every server announces the span it holds under those uids, with
its state, throughput and public name (which carries the node's wallet, see `mesh.announce`).

Anyone can store a record in the DHT under any peer id, so every record is a stranger's claim: one whose span
cannot be the model's (empty, or reaching past its blocks) is left out of the snapshot, and the rest stand.
"""

import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from mesh.announce import kept_public_name, wallet_from_public_name
from protocol.swarm import ServerSnapshot, SwarmSnapshot

logger = logging.getLogger(__name__)


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
        if (server := _server_or_none(model_id, str(peer_id), span, num_blocks)) is not None:
            servers.append(server)
    return SwarmSnapshot(
        model_id=model_id,
        dht_prefix=dht_prefix,
        num_blocks=num_blocks,
        taken_at=datetime.now(UTC),
        servers=tuple(servers),
    )


def _server_or_none(model_id: str, peer_id: str, span: Any, num_blocks: int) -> ServerSnapshot | None:
    """`span`'s server (a Petals `RemoteSpanInfo`) as the snapshot shows it, or None, logged with the reason, when
    its record cannot be one of the model's servers. Each server is judged on its own, so that one stranger's bad
    record cannot fail the whole read: the snapshot would go stale, and the gateway refuse the model."""
    reason = _span_problem(span, num_blocks)
    if reason is None:
        try:
            return _server(peer_id, span)
        except ValidationError as exc:  # never the values: a record is a stranger's, and may be huge
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
    logger.warning(
        "leaving a server out of the swarm snapshot model_id=%s peer_id=%s reason=%s", model_id, peer_id[:80], reason
    )
    return None


def _span_problem(span: Any, num_blocks: int) -> str | None:
    """Why the span a server announced cannot be a span of the model's `num_blocks` blocks, or None.

    Petals clips an announced span to the model's blocks before routing by it; the snapshot clips nothing. A
    server announcing blocks the model does not have is lying or serving something else, and showing the part
    that fits would publish a claim it never made."""
    info = span.server_info
    announced = (info.start_block, info.end_block)
    if None not in announced and not 0 <= announced[0] < announced[1] <= num_blocks:
        return f"announced blocks {announced[0]}:{announced[1]} are not a span of the model's {num_blocks}"
    if not 0 <= span.start < span.end <= num_blocks:
        return f"blocks {span.start}:{span.end} are not a span of the model's {num_blocks}"
    return None


def _server(peer_id: str, span: Any) -> ServerSnapshot:
    info = span.server_info
    return ServerSnapshot(
        peer_id=peer_id,
        public_name=kept_public_name(info.public_name),
        wallet=wallet_from_public_name(info.public_name),
        start_block=span.start,
        end_block=span.end,
        throughput=float(info.throughput),
        state=info.state.name.lower(),
        cache_tokens_left=info.cache_tokens_left,
    )
