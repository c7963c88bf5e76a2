"""One model a worker serves: its Petals client (shared by every concurrent job), tokenizer and thread pool.

Petals' client API blocks, so each model has a thread pool as large as the number of jobs that may run at
once; asyncio's default pool (a handful of threads on a small machine) would serialise concurrent jobs.
"""

import asyncio
import functools
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mesh.client import ClientLimits, MeshClient, open_client
from mesh.peer_speed import PeerSpeeds
from mesh.session import SpanRecorder, SwarmSession
from mesh.session_routes import SessionRoutes
from protocol.catalog import ModelSpec

T = TypeVar("T")

SUSPECT_CLIENT_REPLACED_EVERY_S = 60.0
"""At most this often a client suspected of its own routing failure is replaced: a swarm that is really
broken for every worker costs each worker one reconnect a minute, not one per failed job."""
RETIRED_CLIENT_GRACE_S = 60.0
"""A replaced client stays open at least this long, and until no session opened on it is left: closed under a
call started on it just before (a route refresh) or a session still stepping through it, that call blocked for
ever on its closed DHT (the chaos soak found three requests hung so, their leases renewed)."""
RETIRED_CLIENT_MAX_S = 600.0
"""A replaced client is closed this long after it was replaced whatever still uses it: a session on it then
fails over to the new client, as from any failed step."""


@dataclass
class _Retired:
    """A replaced client, and the sessions opened on it that are still alive."""

    client: MeshClient
    since: float
    sessions: "weakref.WeakSet[SwarmSession]" = field(default_factory=weakref.WeakSet)


def _decodes_plainly(tokenizer_class: type[Any]) -> bool:
    """Whether `tokenizer_class` is a fast tokenizer whose decode is transformers' own: its backend's decode, then
    (only when asked, never here) a clean-up of spaces. A class that overrides either decodes its own way."""
    return (
        issubclass(tokenizer_class, PreTrainedTokenizerFast)
        and tokenizer_class.decode is PreTrainedTokenizerBase.decode
        and getattr(tokenizer_class, "_decode", None) is PreTrainedTokenizerFast._decode
    )


class ServedModel:
    def __init__(self, client: MeshClient, *, max_jobs: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self._clock = clock
        self._client_since = clock()
        self._sessions: weakref.WeakSet[SwarmSession] = weakref.WeakSet()
        self._retired: list[_Retired] = []
        self._client_suspect = False
        self.peer_speeds = PeerSpeeds()
        """Every session's timings of each server's steps; kept across client replacements (they are the servers')."""
        self.spec = client.spec
        model = client.model
        self._executor = ThreadPoolExecutor(max_workers=max_jobs + 2, thread_name_prefix=f"petals-{self.spec.model_id}")
        eos = model.config.eos_token_id
        self.eos_token_ids: frozenset[int] = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 2048))
        self.num_blocks = int(model.config.num_hidden_layers)

    @classmethod
    def open(cls, spec: ModelSpec, initial_peers: list[str], *, limits: ClientLimits, max_jobs: int) -> "ServedModel":
        """Load the client-side weights and join the DHT (blocking: seconds)."""
        return cls(open_client(spec, initial_peers, limits=limits), max_jobs=max_jobs)

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def model(self) -> Any:
        return self.client.model

    @property
    def tokenizer(self) -> Any:
        return self.client.tokenizer

    @property
    def dht_prefix(self) -> str:
        return str(self.model.transformer.h.sequence_manager.config.dht_prefix)

    def connected(self) -> bool:
        """False once the client's DHT process has died; sessions then cannot find routes."""
        return bool(self.client.dht.is_alive())

    def replace_client(self, client: MeshClient) -> None:
        """Swap in a freshly connected client; sessions opened from now on use it. The old one is closed later,
        by `close_retired`, once nothing uses it."""
        self._retired.append(_Retired(self.client, self._clock(), self._sessions))
        self.client, self._sessions = client, weakref.WeakSet()
        self._client_since, self._client_suspect = self._clock(), False

    @property
    def retired_clients(self) -> int:
        return len(self._retired)

    def close_retired(self) -> int:
        """Close the replaced clients nothing uses any more (blocking); returns how many were closed."""
        now = self._clock()
        due = [
            retired
            for retired in self._retired
            if now - retired.since >= RETIRED_CLIENT_MAX_S
            or (now - retired.since >= RETIRED_CLIENT_GRACE_S and not retired.sessions)
        ]
        for retired in due:
            self._retired.remove(retired)
            retired.client.close()
        return len(due)

    def note_no_route(self, *, every_block_announced: bool) -> None:
        """A job gave up for want of a route. With every block announced in the DHT, the fault may be this
        client's own: libp2p backs off dialing an address that failed, longer after each failure (up to
        minutes), so a server restarted on its old address can stay out of this client's reach while every
        other client reaches it. A new client (a new p2pd) starts without those backoffs."""
        self._client_suspect = self._client_suspect or every_block_announced

    def note_routed(self) -> None:
        """A step went through: whatever failed before was the swarm's, and the client is fine."""
        self._client_suspect = False

    def needs_new_client(self) -> str | None:
        """Why this model's client should be replaced now, or None."""
        if not self.connected():
            return "its DHT process died"
        if self._client_suspect and self._clock() - self._client_since >= SUSPECT_CLIENT_REPLACED_EVERY_S:
            return "it found no route while the DHT announced every block"
        return None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of `token_ids`, special tokens left out. Called twice per generated token (`workers.detokenize`):
        a fast tokenizer that decodes as transformers' own does is asked directly, without transformers' wrapper,
        which converts its argument element by element and cost as much as the decoding itself (issue #32)."""
        tokenizer = self.tokenizer
        if _decodes_plainly(type(tokenizer)):
            return str(tokenizer.backend_tokenizer.decode(list(token_ids), skip_special_tokens=True))
        return str(tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def open_session(
        self, *, max_length: int, recorder: SpanRecorder | None = None, routes: SessionRoutes | None = None
    ) -> SwarmSession:
        """A new session; `routes` routes it by a request's preferences (`workers.route_preferences`)."""
        session = SwarmSession(
            self.model, max_length=max_length, recorder=recorder, routes=routes, speeds=self.peer_speeds
        )
        self._sessions.add(session)
        return session

    def new_generator(self, *, seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking Petals call in this model's pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for retired in self._retired:
            retired.client.close()
        self._retired.clear()
        self.client.close()
