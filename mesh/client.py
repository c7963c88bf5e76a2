"""Opening a Petals client (distributed model + tokenizer) for a catalog model, with bounded retries.

Petals' client retries a failing route forever by default (`max_retries=None`, backoff up to 60 s): a worker
would hang on one request while the user waits. Here failures surface after a few quick retries, so the
caller (the worker) can recover one level up: open a fresh session and re-prefill what was generated.

Petals' server-to-server handoff is off (`NO_HANDOFF`): every server computes exactly what the client sent it, so
what a spot check records as a span's inputs is what its server received (docs/verification.md).
"""

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from protocol.catalog import ModelSpec


@dataclass(frozen=True)
class ClientLimits:
    """The `petals.ClientConfig` fields that bound how long a failure takes to surface."""

    max_retries: int = 3
    """Petals' own API server uses 3 "so that the user sees an error instead of a freeze"."""
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    """Per step; a tiny model answers in milliseconds, a 70B one in seconds, a dead server never."""
    min_backoff: float = 0.5
    max_backoff: float = 4.0
    ban_timeout: float = 15.0
    update_period: float = 15.0
    """How often the client re-reads the DHT, so a replaced server is found within seconds."""
    daemon_startup_timeout: int = 30


NO_HANDOFF = {"use_server_to_server": False}
"""Petals lets each server push its outputs straight to the next server of the route, which then processes
whichever copy of a step arrives first. An upstream server could return honest outputs to the client (what a
spot check records as the next span's inputs) and push something else to the next server, whose check then fails
for the upstream's doing: an honest server framed, and slashed. With the handoff off no request names a next
server, so none can be pushed to. It is off for every session, not only sampled ones: a server that sees no next
server named where it usually would would know its session is being checked. The price is one client round trip
per server hop of each step, instead of the push's direct hop."""


@dataclass
class MeshClient:
    """A model and its tokenizer, connected to the swarm through the model's own DHT."""

    spec: ModelSpec
    model: Any
    """`petals.AutoDistributedModelForCausalLM`: call `.inference_session(...)` and `.generate(...)` on it."""
    tokenizer: Any

    @property
    def dht(self) -> Any:
        """The client's hivemind DHT: read the swarm through it rather than joining the DHT a second time."""
        return self.model.transformer.h.sequence_manager.dht

    def refresh_routes(self) -> list[str]:
        """Re-read the swarm, ping every server of the model, and ban the unreachable ones; returns their ids.

        Petals does not ban a server it failed to connect to while opening a session, and the DHT keeps
        announcing a crashed server until its record expires (minutes), so without this a new session may be
        routed to the same dead server on every retry. Call it after a failure, before opening a new session.
        Bans last `ClientLimits.ban_timeout` seconds, then the server is tried again.
        """
        manager = self.model.transformer.h.sequence_manager
        reread_swarm(manager)
        with manager.lock_changes:
            peers = {span.peer_id for spans in manager.state.sequence_info.spans_containing_block for span in spans}
        manager.ping_aggregator.ping(list(peers), wait_timeout=manager.config.ping_timeout)
        rtts = manager.ping_aggregator.to_dict()
        unreachable = [peer for peer in peers if rtts.get(peer) == math.inf]
        for peer in unreachable:
            manager.on_request_failure(peer)
        if unreachable:  # a ban reaches the routes only when they are rebuilt: until then the next one may cross it
            reread_swarm(manager)
        return sorted(peer.to_base58() for peer in unreachable)

    def close(self) -> None:
        """Stop the route updater, the client's P2P connection and its DHT, each with its p2pd.

        The P2P object lives on hivemind's background event loop and must be shut down there: left to the
        garbage collector, it tries to close itself on the main thread, which has no event loop.
        """
        from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

        manager = self.model.transformer.h.sequence_manager
        manager.shutdown()
        if manager.state.p2p is not None:
            RemoteExpertWorker.run_coroutine(manager.state.p2p.shutdown())
        manager.dht.shutdown()


REREAD_NUDGE_S = 2.0
"""How often `reread_swarm` asks Petals' updater again while waiting for it."""


def reread_swarm(manager: Any) -> None:
    """Have `manager` (a Petals sequence manager) read the swarm again and wait for it. Petals' `update(wait=True)`
    waits for its updater thread with no bound: with the DHT unreachable the updater retries for ever, and so
    would the request that asked. Here the wait ends after `manager.config.request_timeout` with `TimeoutError`,
    which the callers treat as any failed refresh.

    The updater is asked again every `REREAD_NUDGE_S`: a read that fails (a DHT query that errs under load) leaves
    Petals' updater asleep for its whole update period (15 s here) before the next try, so one failed read would
    otherwise use up most of the wait. Asking again while a read runs only queues one more read after it."""
    deadline = time.monotonic() + manager.config.request_timeout
    manager.update(wait=False)
    while not manager.ready.wait(timeout=max(0.0, min(REREAD_NUDGE_S, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the swarm's routes were not re-read within {manager.config.request_timeout} s")
        manager.update(wait=False)


def open_client(
    spec: ModelSpec,
    initial_peers: Sequence[str],
    *,
    limits: ClientLimits = ClientLimits(),
    torch_dtype: str = "float32",
) -> MeshClient:
    """Load `spec`'s config, tokenizer and client-side weights (embeddings, head) and join the swarm's DHT.

    Works the same for a hub id (weights from the hub cache) and a local directory (tiny models).
    """
    import torch
    from transformers import AutoTokenizer

    from mesh.compat import AutoDistributedModelForCausalLM

    if not initial_peers:
        raise ValueError(f"{spec.model_id}: no initial peers; pass the swarm's multiaddrs (FAR_MESH_DHT_BOOTSTRAP)")
    tokenizer = AutoTokenizer.from_pretrained(spec.weights_source)
    model = AutoDistributedModelForCausalLM.from_pretrained(
        spec.weights_source,
        initial_peers=list(initial_peers),
        dht_prefix=spec.dht_prefix,
        torch_dtype=torch_dtype if torch_dtype == "auto" else getattr(torch, torch_dtype),
        show_route=False,
        **asdict(limits),
        **NO_HANDOFF,
    )
    return MeshClient(spec=spec, model=model, tokenizer=tokenizer)
