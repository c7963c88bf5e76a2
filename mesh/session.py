"""Stepping one Petals inference session token by token, and reading which server spans served each step.

The worker needs logits (to sample with its own temperature/top_p) and the route of every step (to pay the
nodes), which `model.generate` hides; so this module drives `InferenceSession.step` directly: embed the
new tokens locally, run them through the remote blocks, apply the final norm and LM head locally. Every
call blocks (Petals does network I/O under the hood): run it in a thread.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh.announce import kept_public_name
from mesh.peer_speed import PeerSpeeds
from mesh.server_sessions import watch_server_sessions
from protocol.verification import RecordedSpan, RecordedStep

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

    def __init__(
        self,
        model: Any,
        *,
        max_length: int,
        recorder: SpanRecorder | None = None,
        routes: Any | None = None,
        speeds: PeerSpeeds | None = None,
    ) -> None:
        """`routes`: a per-session view of the sequence manager (`mesh.session_routes.SessionRoutes`) that routes
        by a buyer's preferences; None routes as Petals does, through the model's shared manager. `speeds`: where
        every server's decode steps are timed (`mesh.peer_speed`), the evidence `sort: throughput` ranks by."""
        from mesh.compat import petals

        self._model = model
        manager = routes if routes is not None else model.transformer.h.sequence_manager
        self._session = petals.client.InferenceSession(manager, max_length=max_length)
        if speeds is not None:
            speeds.attach(self._session)  # before the recorder: its tensor copies stay outside the timed call
        self._recorder = recorder
        if recorder is not None:
            recorder.attach(self._session)

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
        if self._recorder is not None:
            self._recorder.step_done()
        return StepResult(logits=logits, spans=served_spans(self._session), tokens=len(token_ids))

    def close(self) -> None:
        """Release the servers' caches; safe to call twice and after a failed step."""
        self._session.close()


@dataclass
class _SpanTape:
    peer_id: str
    start_block: int
    end_block: int
    announced_dtype: str | None
    steps: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class SpanRecorder:
    """Keeps, for a sampled request, what each server span was sent and returned at each step.

    It wraps the `step` of every server session Petals opens (on the first step and after each failover), so
    it sees exactly the tensors that crossed the network; a span's first step carries the whole history it was
    given, so each tape starts at position 0 and can be recomputed on its own. One recorder may outlive several
    `SwarmSession`s of one request (the worker's own recoveries): steps keep counting across them.
    """

    def __init__(self) -> None:
        self._tapes: list[_SpanTape] = []
        self._step = 0

    def attach(self, session: Any) -> None:
        """Record every server session `session` (a Petals `InferenceSession`) enters from now on."""
        watch_server_sessions(session, self._watch)

    def _watch(self, server_session: Any) -> None:
        span = server_session.span
        tape = _SpanTape(
            peer_id=str(span.peer_id),
            start_block=int(span.start),
            end_block=int(span.end),
            announced_dtype=announced_dtype(span),
        )
        self._tapes.append(tape)
        step = server_session.step

        def recording_step(inputs: Any, prompts: Any, hypo_ids: Any, *, step_id: str) -> Any:
            outputs = step(inputs, prompts, hypo_ids, step_id=step_id)
            sent = server_session.history[0, -outputs.shape[1] :]  # what went out: the history on a first step
            tape.steps.append((self._step, sent.detach().clone(), outputs[0].detach().clone()))
            return outputs

        server_session.step = recording_step

    def step_done(self) -> None:
        self._step += 1

    def spans(self) -> tuple[RecordedSpan, ...]:
        """The tapes that served at least one step, as the verification message carries them."""
        return tuple(
            RecordedSpan(
                peer_id=tape.peer_id,
                start_block=tape.start_block,
                end_block=tape.end_block,
                hidden_size=int(tape.steps[0][1].shape[-1]),
                announced_dtype=tape.announced_dtype,
                steps=tuple(
                    RecordedStep(
                        step=step,
                        tokens=int(sent.shape[0]),
                        inputs_dtype=dtype_name(sent),
                        inputs_b64=tensor_b64(sent),
                        outputs_dtype=dtype_name(out),
                        outputs_b64=tensor_b64(out),
                    )
                    for step, sent, out in tape.steps
                ),
            )
            for tape in self._tapes
            if tape.steps
        )


def dtype_name(tensor: torch.Tensor) -> str:
    """The name a recorded tensor's dtype travels under (`float32`, `bfloat16`, ...). Any dtype is recorded as it
    came: a reply in a dtype no honest server sends is the server's to answer for (the verifier convicts it), so
    the worker neither refuses nor converts it."""
    return str(tensor.dtype).removeprefix("torch.")


def announced_dtype(span: Any) -> str | None:
    """The torch_dtype a Petals span's server announced in the DHT (`ServerInfo.torch_dtype`; None when it
    announced none): the verifier's tolerance follows what a server said it computes in, not what it replies in."""
    announced = getattr(getattr(span, "server_info", None), "torch_dtype", None)
    return str(announced)[:32] if announced else None


def tensor_b64(tensor: torch.Tensor) -> str:
    """Raw little-endian bytes of `tensor` whatever its dtype (bfloat16 as its 16-bit patterns, which numpy
    lacks), base64."""
    import torch

    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return base64.b64encode(flat.view(torch.uint8).numpy().tobytes()).decode("ascii")


def served_spans(session: Any) -> tuple[ServedSpan, ...]:
    """Copy the spans a Petals `InferenceSession` is routed through right now, each server's public name cut to
    what its record may carry with every token (`kept_public_name`)."""
    spans = []
    for server_session in list(session._server_sessions):
        span = server_session.span
        info = getattr(span, "server_info", None)
        spans.append(
            ServedSpan(
                peer_id=str(span.peer_id),
                start_block=int(span.start),
                end_block=int(span.end),
                public_name=kept_public_name(getattr(info, "public_name", None)),
            )
        )
    return tuple(spans)


def uncovered_blocks(model: Any) -> list[int]:
    """Blocks of the model no known server holds, per the client's latest view of the DHT."""
    sequence_info = model.transformer.h.sequence_manager.state.sequence_info
    return [index for index, spans in enumerate(sequence_info.spans_containing_block) if not spans]
