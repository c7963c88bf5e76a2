"""Stand-ins the verifier's tests share, and the accounting tests that take verdicts and sampled sessions: a
span's verdict, a worker's settings, a served model whose sequence manager holds `peers`, and recorded spans."""

import threading
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

from mesh.session import SpanRecorder
from protocol.verification import RecordedSpan, RecordedStep
from verifier.recompute import SpanVerdict
from workers.settings import WorkerSettings

PEER_A = "QmNckXSTCTz4ugo9p4jbYJeaQUJS4bgTnrzLzqCPQQBdJR"
MODEL = "far-tiny-llama-4"


def verdict(node: str, *, bad: bool = False, start: int = 0, end: int = 2) -> SpanVerdict:
    return SpanVerdict(
        peer_id=node,
        start_block=start,
        end_block=end,
        steps=3,
        tokens=7,
        max_error=0.4 if bad else 1e-6,
        tolerance=2e-4,
        first_bad_step=1 if bad else None,
    )


class FakeManager:
    """What `workers` reads and sets on Petals' RemoteSequenceManager."""

    def __init__(self, peers: list[str]) -> None:
        from hivemind.dht.node import Blacklist
        from hivemind.p2p import PeerID

        spans = [[SimpleNamespace(peer_id=PeerID.from_base58(p))] for p in peers]
        self.state = SimpleNamespace(
            sequence_info=SimpleNamespace(spans_containing_block=spans),
            banned_peers=Blacklist(base_time=15.0, backoff_rate=2.0),
        )
        self.lock_changes = threading.Lock()
        self.blocked_servers: Any = None
        self.updates = 0
        self.ready = threading.Event()
        self.ready.set()
        self.config = SimpleNamespace(request_timeout=5.0)

    def update(self, *, wait: bool) -> None:
        self.updates += 1

    def on_request_failure(self, peer_id: Any) -> None:
        """Petals' own bookkeeping: the peer goes on its temporary ban list."""
        self.state.banned_peers.register_failure(peer_id)


class FakeServed:
    def __init__(self, peers: list[str]) -> None:
        self.model_id = MODEL
        self.manager = FakeManager(peers)
        self.model = SimpleNamespace(transformer=SimpleNamespace(h=SimpleNamespace(sequence_manager=self.manager)))

    async def run_blocking(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


def settings(**overrides: Any) -> WorkerSettings:
    values = {"far_mesh_dht_bootstrap": "/ip4/127.0.0.1/tcp/1/p2p/" + PEER_A, **overrides}
    return WorkerSettings.from_env(**values)


class Replay(SpanRecorder):
    """A recorder holding `spans`, as a sampled session whose route used exactly those server spans leaves it."""

    def __init__(self, spans: Iterable[RecordedSpan]) -> None:
        super().__init__()
        self._recorded = tuple(spans)

    def spans(self) -> tuple[RecordedSpan, ...]:
        return self._recorded


def recorded_span(peer: str, payload_bytes: int = 12) -> RecordedSpan:
    """A one-step span of `peer` whose inputs and outputs are `payload_bytes` each (as base64)."""
    data = "A" * (4 * -(-payload_bytes // 3))
    step = RecordedStep(
        step=0, tokens=1, inputs_dtype="float32", inputs_b64=data, outputs_dtype="float32", outputs_b64=data
    )
    return RecordedSpan(
        peer_id=peer, start_block=0, end_block=2, hidden_size=8, announced_dtype="float32", steps=(step,)
    )
