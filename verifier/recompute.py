"""Rerunning a server span's blocks on the hidden states it was sent, with weights the verifier holds itself.

The verifier loads the model with transformers (float32, CPU for the tiny models) and runs blocks
[start, end) of it over the span's whole recorded input at once, with a causal mask: position by position
that is what the server computed step by step with its KV cache, so the two differ only by rounding.

Every recorded tensor is decoded with its own dtype label, and the tolerance follows the dtype the server
announced, never the dtype it replied in: a server cannot loosen its own check by replying in a coarser dtype,
nor switch it off by replying in one that does not decode. A reply that cannot be verified is a verdict against
its server (`verifier.unverifiable`); the worker's own part of a recording that cannot be used convicts nobody.
"""

import base64
import binascii
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.verification import MAX_POSITIONS, RecordedSpan, RecordedStep
from verifier.tolerance import MACHINE_EPSILON, MAX_TOLERANCE, tolerance_for
from verifier.unverifiable import Cause, RecordingUnusable

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAGNITUDE_FLOOR = 1e-6
"""Keeps the relative error finite for a (never seen) all-zero step."""


class BlockRunner:
    """One model's transformer blocks, loaded once, run on recorded hidden states."""

    def __init__(self, model: Any) -> None:
        self._layers = model.model.layers
        self.num_blocks = len(self._layers)
        self.hidden_size = int(model.config.hidden_size)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", MAX_POSITIONS))

    @classmethod
    def load(cls, weights_source: str | Path) -> "BlockRunner":
        """Load a Llama-family causal LM's weights in float32 (its embeddings and head are not needed, but
        transformers loads the model whole)."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(weights_source), torch_dtype=torch.float32)
        model.eval()
        return cls(model)

    def run(self, start_block: int, end_block: int, hidden: torch.Tensor) -> torch.Tensor:
        """Blocks [start_block, end_block) applied to `hidden` ([positions, hidden], positions from 0)."""
        if not 0 <= start_block < end_block <= self.num_blocks:
            raise ValueError(f"blocks {start_block}..{end_block} are outside this model's {self.num_blocks}")
        positions = hidden.shape[0]
        mask = torch.full((positions, positions), torch.finfo(torch.float32).min).triu(1)[None, None]
        position_ids = torch.arange(positions)[None]
        states = hidden.to(torch.float32)[None]
        with torch.no_grad():
            for layer in self._layers[start_block:end_block]:
                states = layer(states, attention_mask=mask, position_ids=position_ids)[0]
        return states[0]


@dataclass(frozen=True)
class SpanVerdict:
    """How one recorded span compared with its recomputation."""

    peer_id: str
    start_block: int
    end_block: int
    steps: int
    tokens: int
    max_error: float
    """The largest relative error over the span's steps (see `verifier.tolerance`)."""
    tolerance: float
    first_bad_step: int | None
    """The session step of the first step over tolerance (or whose reply could not be verified); None when every
    step was within it."""
    cause: Cause | None = None
    """Why the verdict is a mismatch (`verifier.unverifiable.Cause`); None for an ok verdict."""

    @property
    def ok(self) -> bool:
        return self.first_bad_step is None


class DecodeError(ValueError):
    """A recorded tensor does not decode: `cause` is `unknown-dtype` or `undecodable`."""

    def __init__(self, cause: Cause, detail: str) -> None:
        super().__init__(detail)
        self.cause: Cause = cause


def decode_tensor(b64: str, dtype: str, hidden_size: int) -> torch.Tensor:
    """A recorded [positions, hidden] tensor back from its base64 bytes (see `mesh.session.tensor_b64`); raises
    `DecodeError` for a dtype hidden states never honestly travel in, or bytes that are not such a tensor."""
    if dtype not in _TORCH_DTYPES:
        raise DecodeError("unknown-dtype", f"hidden states in {dtype[:32]!r}; expected one of {sorted(_TORCH_DTYPES)}")
    try:
        raw = bytearray(base64.b64decode(b64, validate=True))  # writable: torch.frombuffer warns on read-only memory
    except binascii.Error as exc:
        raise DecodeError("undecodable", f"not base64: {exc}") from exc
    width = torch.tensor([], dtype=_TORCH_DTYPES[dtype]).element_size()
    if not raw or len(raw) % (width * hidden_size):
        raise DecodeError(
            "undecodable", f"{len(raw)} bytes are not a whole number of {hidden_size}-wide rows of {dtype}"
        )
    if dtype == "bfloat16":
        tensor = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
    else:
        tensor = torch.frombuffer(raw, dtype=_TORCH_DTYPES[dtype])
    return tensor.view(-1, hidden_size)


def verify_span(runner: BlockRunner, span: RecordedSpan) -> SpanVerdict:
    """Recompute `span` from its recorded inputs and compare, step by step, with what the server returned.

    Raises `RecordingUnusable` when the worker's part of the recording cannot be used; a reply that cannot be
    verified, or a server that announced no dtype the verifier knows, is a mismatch with that cause.
    """
    if span.hidden_size != runner.hidden_size:
        raise RecordingUnusable("wrong-width", f"span hidden size {span.hidden_size} is not the model's")
    if not 0 <= span.start_block < span.end_block <= runner.num_blocks:
        raise RecordingUnusable(
            "outside-model", f"blocks {span.start_block}..{span.end_block} of a {runner.num_blocks}-block model"
        )
    if span.tokens > runner.max_positions:  # its one-pass mask alone would be positions x positions floats
        raise RecordingUnusable("too-long", f"{span.tokens} positions; the model holds {runner.max_positions}")
    sent = [_inputs_of(step, span.hidden_size) for step in span.steps]
    blocks = span.end_block - span.start_block
    if span.announced_dtype not in MACHINE_EPSILON:
        return _convicted(span, MAX_TOLERANCE, span.steps[0].step, "unknown-dtype")
    tolerance = tolerance_for(span.announced_dtype, blocks)
    returned = []
    for step in span.steps:
        try:
            outputs = decode_tensor(step.outputs_b64, step.outputs_dtype, span.hidden_size)
        except DecodeError as exc:
            return _convicted(span, tolerance, step.step, exc.cause)
        if outputs.shape[0] != step.tokens:
            return _convicted(
                span, tolerance, step.step, "missing-positions" if outputs.shape[0] < step.tokens else "wrong-shape"
            )
        returned.append(outputs)
    # An honest server casts what it receives to its own dtype before its blocks (Petals' block functions): so
    # does the recomputation, so the only difference left is the server's arithmetic.
    computes_in = _TORCH_DTYPES[span.announced_dtype]
    expected = runner.run(span.start_block, span.end_block, torch.cat([x.to(computes_in) for x in sent]))
    if not bool(torch.isfinite(expected).all()):  # finite inputs an honest server's dtype cannot carry through
        raise RecordingUnusable("recomputed-non-finite", f"blocks {span.start_block}..{span.end_block} overflow")
    max_error, first_bad_step, offset = 0.0, None, 0
    for step, outputs in zip(span.steps, returned, strict=True):
        want = expected[offset : offset + step.tokens]
        offset += step.tokens
        got = outputs.to(torch.float32)
        magnitude = max(float(want.abs().max()), _MAGNITUDE_FLOOR)
        error = float((got - want).abs().max()) / magnitude
        if not error <= tolerance and first_bad_step is None:  # `not <=` also catches NaN
            first_bad_step = step.step
        max_error = max(max_error, error) if error == error else float("inf")
    return SpanVerdict(
        peer_id=span.peer_id,
        start_block=span.start_block,
        end_block=span.end_block,
        steps=len(span.steps),
        tokens=span.tokens,
        max_error=max_error,
        tolerance=tolerance,
        first_bad_step=first_bad_step,
        cause=None if first_bad_step is None else "over-tolerance",
    )


def _inputs_of(step: RecordedStep, hidden_size: int) -> torch.Tensor:
    """A step's recorded inputs: what the worker sent, so a problem with them is the worker's, not the server's."""
    try:
        inputs = decode_tensor(step.inputs_b64, step.inputs_dtype, hidden_size)
    except DecodeError as exc:
        raise RecordingUnusable(f"inputs-{exc.cause}", f"step {step.step}: {exc}") from exc
    if inputs.shape[0] != step.tokens:
        raise RecordingUnusable(
            "inputs-wrong-shape", f"step {step.step} holds {inputs.shape[0]} of {step.tokens} positions"
        )
    # NaN or inf an upstream server returned: whatever this server makes of them, nothing can be expected of it,
    # and the upstream server is judged on its own span (no server can frame the one after it)
    if not bool(torch.isfinite(inputs).all()):
        raise RecordingUnusable("inputs-non-finite", f"step {step.step}")
    return inputs


def _convicted(span: RecordedSpan, tolerance: float, step: int, cause: Cause) -> SpanVerdict:
    """A mismatch for a reply that could not be verified at session step `step`: its error is unbounded."""
    return SpanVerdict(
        peer_id=span.peer_id,
        start_block=span.start_block,
        end_block=span.end_block,
        steps=len(span.steps),
        tokens=span.tokens,
        max_error=math.inf,
        tolerance=tolerance,
        first_bad_step=step,
        cause=cause,
    )
