"""Honest span I/O without a swarm: blocks run step by step with a KV cache, the way a Petals server runs them.

`honest_span(model, start, end, steps)` feeds a prefill of `steps[0]` positions, then one position per later
step, through blocks [start, end) of a transformers Llama, and records what went in and came out as a
`RecordedSpan`; `sixteen_bit_span` does the same as a server computing in float16 or bfloat16 does (inputs cast
to its dtype, blocks run in it, replies in it), for inputs the worker sent in float32.
"""

from collections.abc import Sequence
from typing import Any

import torch

from mesh.session import dtype_name, tensor_b64
from protocol.verification import RecordedSpan, RecordedStep


def _step_mask(past: int, new: int) -> torch.Tensor:
    mask = torch.full((new, past + new), torch.finfo(torch.float32).min)
    return mask.triu(past + 1)[None, None]


def run_incrementally(layers: Sequence[Any], chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs of `layers` for each chunk of positions, each step reusing the earlier steps' KV caches."""
    caches: list[Any] = [None] * len(layers)
    outputs, past = [], 0
    with torch.no_grad():
        for chunk in chunks:
            states = chunk[None]
            positions = torch.arange(past, past + chunk.shape[0])[None]
            for index, layer in enumerate(layers):
                states, caches[index] = layer(
                    states,
                    attention_mask=_step_mask(past, chunk.shape[0]),
                    position_ids=positions,
                    past_key_value=caches[index],
                    use_cache=True,
                )
            outputs.append(states[0])
            past += chunk.shape[0]
    return outputs


def honest_span(
    model: Any, start: int, end: int, chunks: Sequence[torch.Tensor], peer_id: str = "honest"
) -> RecordedSpan:
    outputs = run_incrementally(model.model.layers[start:end], chunks)
    return recorded(peer_id, start, end, chunks, outputs)


def sixteen_bit_span(
    server: Any, start: int, end: int, chunks: Sequence[torch.Tensor], peer_id: str = "honest-16"
) -> RecordedSpan:
    """What the worker records of an honest server whose weights are `server` (a model in float16 or
    bfloat16): it sends `chunks` as they are, the server casts them to its dtype and replies in it."""
    dtype = next(server.parameters()).dtype
    outputs = run_incrementally(server.model.layers[start:end], [chunk.to(dtype) for chunk in chunks])
    return recorded(peer_id, start, end, chunks, outputs, announced=dtype_name(outputs[0]))


def recorded(
    peer_id: str,
    start: int,
    end: int,
    inputs: Sequence[torch.Tensor],
    outputs: Sequence[torch.Tensor],
    announced: str | None = "float32",
) -> RecordedSpan:
    """The span as the worker records it: each tensor with its own dtype, and the dtype the server announced."""
    return RecordedSpan(
        peer_id=peer_id,
        start_block=start,
        end_block=end,
        hidden_size=int(inputs[0].shape[-1]),
        announced_dtype=announced,
        steps=tuple(
            RecordedStep(
                step=i,
                tokens=int(x.shape[0]),
                inputs_dtype=dtype_name(x),
                inputs_b64=tensor_b64(x),
                outputs_dtype=dtype_name(y),
                outputs_b64=tensor_b64(y),
            )
            for i, (x, y) in enumerate(zip(inputs, outputs, strict=True))
        ),
    )


def random_chunks(
    generator: torch.Generator, hidden: int, prompt: int, steps: int, scale: float = 1.0
) -> list[torch.Tensor]:
    """A prefill of `prompt` positions and `steps` single positions of embedding-like hidden states."""
    sizes = [prompt] + [1] * steps
    return [torch.randn(size, hidden, generator=generator) * scale for size in sizes]
