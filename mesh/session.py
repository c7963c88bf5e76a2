"""Stepping one Petals inference session token by token, and reading which server spans served each step.

The worker needs logits (to sample with its own temperature/top_p) and the route of every step (to pay the
nodes), which `model.generate` hides; so this module drives `InferenceSession.step` directly: embed the
new tokens locally, run them through the remote blocks, apply the final norm and LM head locally. Every
call blocks (Petals does network I/O under the hood): run it in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ServedSpan:
    """One server's part of a step's route: blocks [start_block, end_block) on peer `peer_id`."""

    peer_id: str
    start_block: int
    end_block: int
    public_name: str | None = None


@dataclass(frozen=True)
class StepResult:
    logits: torch.Tensor
    """Logits over the vocabulary for the position after the last token fed in (1-D, float32)."""
    spans: tuple[ServedSpan, ...]
    """The route that served this step, copied right after it (Petals replaces the list on failover)."""
    tokens: int
    """How many tokens this step fed through every block."""


class SwarmSession:
    """A Petals inference session over a distributed causal LM's remote blocks, with its own KV caches."""

    def __init__(self, model: Any, *, max_length: int) -> None:
        from mesh.compat import petals

        self._model = model
        self._session = petals.client.InferenceSession(model.transformer.h.sequence_manager, max_length=max_length)

    @property
    def position(self) -> int:
        """Tokens the servers hold in their caches for this session."""
        return int(self._session.position)

    def step(self, token_ids: Sequence[int]) -> StepResult:
        """Feed `token_ids` (the prompt, or the last generated token) and return the next token's logits."""
        import torch

        model = self._model
        with torch.no_grad():
            ids = torch.tensor([list(token_ids)], dtype=torch.long)
            embeds = model.transformer.word_embeddings_layernorm(model.transformer.word_embeddings(ids))
            hidden = self._session.step(embeds)
            hidden = model.transformer.ln_f(hidden[:, -1:])
            logits = model.lm_head(hidden)[0, -1].float()
        return StepResult(logits=logits, spans=served_spans(self._session), tokens=len(token_ids))

    def close(self) -> None:
        """Release the servers' caches; safe to call twice and after a failed step."""
        self._session.close()


def served_spans(session: Any) -> tuple[ServedSpan, ...]:
    """Copy the spans a Petals `InferenceSession` is routed through right now."""
    spans = []
    for server_session in list(session._server_sessions):
        span = server_session.span
        info = getattr(span, "server_info", None)
        spans.append(
            ServedSpan(
                peer_id=str(span.peer_id),
                start_block=int(span.start),
                end_block=int(span.end),
                public_name=getattr(info, "public_name", None),
            )
        )
    return tuple(spans)


def uncovered_blocks(model: Any) -> list[int]:
    """Blocks of the model no known server holds, per the client's latest view of the DHT."""
    sequence_info = model.transformer.h.sequence_manager.state.sequence_info
    return [index for index, spans in enumerate(sequence_info.spans_containing_block) if not spans]
