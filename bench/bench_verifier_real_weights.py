"""The verifier's false-positive rate on real weights: SmolLM2-135M-Instruct's honest spans, float32 and bfloat16.

`verifier.tolerance` was set from the tiny random-weight models (docs/verification.md). Real weights have what
random ones lack (a few hidden units hundreds of times larger than the rest, attention that really attends), so
this recounts on the real model: spans of 1 to 15 of its 30 blocks, their inputs the hidden states real English
text has at the span's first block, a prefill of 1 to 12 positions and up to 12 decode steps, each computed as an
honest server computes it (step by step over its KV cache; a bfloat16 server casts its float32 inputs, runs its
blocks and replies in bfloat16, announcing bfloat16) and judged by `verifier.recompute.verify_span` as the
verifier judges a recorded span. Printed per dtype: the false positives (honest spans over tolerance, the rate the
issue asks for) and the worst honest error as a fraction of the tolerance; then, as the baseline that says the
check still means something, how many spans of a server whose span's weights are off by 1% are caught.

    .venv/bin/python bench/bench_verifier_real_weights.py [--spans 200]
"""

import argparse
import copy
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mesh.gguf_checkpoint import SMOLLM2, ensure_checkpoint  # noqa: E402
from mesh.session import dtype_name, tensor_b64  # noqa: E402
from protocol.verification import RecordedSpan, RecordedStep  # noqa: E402
from verifier.recompute import BlockRunner, verify_span  # noqa: E402

CACHE_DIR = Path(os.environ.get("FAR_MESH_CACHE_DIR", REPO / ".cache" / "far-mesh"))
TEXTS = (
    "The capital of France is Paris. Its most famous landmarks are the Eiffel Tower and the Louvre.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen inside the leaves of plants.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5",
    "In 1969, Neil Armstrong became the first person to walk on the Moon, followed by Buzz Aldrin.",
    "<|im_start|>user\nExplain quantum computing in one sentence.<|im_end|>\n<|im_start|>assistant\n",
    "Rain fell all night; by morning the river had risen, and the old bridge was closed to traffic.",
)
MAX_SPAN_BLOCKS = 15
"""The widest span `make run` serves (0:15 and 15:30)."""


def _step_mask(past: int, new: int) -> torch.Tensor:
    return torch.full((new, past + new), torch.finfo(torch.float32).min).triu(past + 1)[None, None]


def served_span(layers: Sequence[Any], chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What a server running `layers` replies for each chunk, step by step over its KV cache, in its dtype."""
    dtype = next(layers[0].parameters()).dtype
    caches: list[Any] = [None] * len(layers)
    outputs, past = [], 0
    with torch.no_grad():
        for chunk in chunks:
            states = chunk.to(dtype)[None]
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


def recorded(start: int, end: int, inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> RecordedSpan:
    """The span as the worker records it: each tensor in its own dtype, the dtype announced being the reply's."""
    return RecordedSpan(
        peer_id="honest",
        start_block=start,
        end_block=end,
        hidden_size=int(inputs[0].shape[-1]),
        announced_dtype=dtype_name(outputs[0]),
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


def block_inputs(model: Any, tokenizer: Any) -> list[list[torch.Tensor]]:
    """Per text, the hidden states entering each block: [text][block] -> [positions, hidden], float32."""
    states = []
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            hidden = model(ids, output_hidden_states=True).hidden_states
            states.append([h[0] for h in hidden[: model.config.num_hidden_layers]])
    return states


def run(
    runner: BlockRunner, server: Any, inputs: list[list[torch.Tensor]], spans: int, seed: int
) -> tuple[int, float, float]:
    """(spans over tolerance, worst error / tolerance, seconds) over `spans` honest spans of `server`."""
    generator = torch.Generator().manual_seed(seed)
    blocks = len(inputs[0])
    over, worst, started = 0, 0.0, time.monotonic()
    for _ in range(spans):

        def draw(low: int, high: int) -> int:
            return int(torch.randint(low, high + 1, (1,), generator=generator))

        width = draw(1, MAX_SPAN_BLOCKS)
        start = draw(0, blocks - width)
        text = inputs[draw(0, len(inputs) - 1)][start]
        prefill = draw(1, min(12, text.shape[0] - 1))
        steps = draw(0, min(12, text.shape[0] - prefill))
        chunks = [text[:prefill], *(text[i : i + 1] for i in range(prefill, prefill + steps))]
        outputs = served_span(server.model.layers[start : start + width], chunks)
        verdict = verify_span(runner, recorded(start, start + width, chunks, outputs))
        over += not verdict.ok
        worst = max(worst, verdict.max_error / verdict.tolerance)
    return over, worst, time.monotonic() - started


def perturbed(model: Any, seed: int) -> Any:
    """A cheat: every block's weights off by 1% (multiplicative noise), in the model's dtype."""
    cheat = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in cheat.model.layers.parameters():
            noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
            parameter.mul_(1 + 0.01 * noise)
    return cheat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=200, help="honest spans per dtype")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # the verifier's own setting on a shared machine; small matrices gain little from more
    path = ensure_checkpoint(CACHE_DIR, SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
    runner = BlockRunner(model)
    inputs = block_inputs(model, AutoTokenizer.from_pretrained(str(path)))
    print(f"SmolLM2-135M-Instruct, {args.spans} honest spans per dtype of 1-{MAX_SPAN_BLOCKS} blocks, real text")
    for dtype in ("float32", "bfloat16"):
        server = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
        over, worst, seconds = run(runner, server, inputs, args.spans, seed=1)
        print(
            f"  {dtype}: {over} false positives in {args.spans} ({over / args.spans:.2%}); worst honest error "
            f"{worst:.4f} x tolerance; {seconds:.0f} s"
        )
        cheats = max(1, args.spans // 10)
        caught = run(runner, perturbed(server, seed=2), inputs, cheats, seed=3)[0]
        print(f"    baseline: a server with weights off by 1% caught in {caught} of {cheats} spans")


if __name__ == "__main__":
    main()
