"""Rerunning a server span's blocks on the hidden states it was sent, with weights the verifier holds itself.

The verifier loads the model with transformers (float32, CPU for the tiny models) and runs blocks
[start, end) of it over the span's whole recorded input at once, with a causal mask: position by position
that is what the server computed step by step with its KV cache, so the two differ only by rounding.
"""

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.verification import RecordedSpan
from verifier.tolerance import tolerance_for

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAGNITUDE_FLOOR = 1e-6
"""Keeps the relative error finite for a (never seen) all-zero step."""


class BlockRunner:
    """One model's transformer blocks, loaded once, run on recorded hidden states."""

    def __init__(self, model: Any) -> None:
        self._layers = model.model.layers
        self.num_blocks = len(self._layers)
        self.hidden_size = int(model.config.hidden_size)

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
    """The session step of the first step over tolerance; None when every step was within it."""

    @property
    def ok(self) -> bool:
        return self.first_bad_step is None


def decode_tensor(b64: str, dtype: str, hidden_size: int) -> torch.Tensor:
    """A recorded [positions, hidden] tensor back from its base64 bytes (see `mesh.session.tensor_b64`)."""
    raw = bytearray(base64.b64decode(b64))  # writable: torch.frombuffer warns on read-only memory
    if dtype == "bfloat16":
        tensor = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16)
    else:
        tensor = torch.frombuffer(raw, dtype=_TORCH_DTYPES[dtype])
    if tensor.numel() % hidden_size:
        raise ValueError(
            f"a recorded tensor of {tensor.numel()} values is not a whole number of {hidden_size}-wide rows"
        )
    return tensor.view(-1, hidden_size)


def verify_span(runner: BlockRunner, span: RecordedSpan) -> SpanVerdict:
    """Recompute `span` from its recorded inputs and compare, step by step, with what the server returned."""
    if span.hidden_size != runner.hidden_size:
        raise ValueError(f"span hidden size {span.hidden_size} is not the model's {runner.hidden_size}")
    sent = [decode_tensor(step.inputs_b64, span.dtype, span.hidden_size) for step in span.steps]
    returned = [decode_tensor(step.outputs_b64, span.dtype, span.hidden_size) for step in span.steps]
    for step, inputs, outputs in zip(span.steps, sent, returned, strict=True):
        if inputs.shape[0] != step.tokens or outputs.shape != inputs.shape:
            raise ValueError(f"step {step.step} of {span.peer_id} does not hold {step.tokens} positions in and out")
    expected = runner.run(span.start_block, span.end_block, torch.cat(sent))
    tolerance = tolerance_for(span.dtype, span.end_block - span.start_block)
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
    )
