"""verifier.recompute on span I/O recorded without a swarm: honest spans pass, cheating ones are caught."""

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from protocol.catalog import ModelSpec
from tests.verifier.honest import honest_span, random_chunks, recorded, run_incrementally
from verifier.recompute import BlockRunner, decode_tensor, verify_span
from verifier.tolerance import tolerance_for


@pytest.fixture(scope="module")
def local_model(tiny_models: tuple[ModelSpec, ...]) -> Iterator[Any]:
    from transformers import AutoModelForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend for the machine's two cores
    model = AutoModelForCausalLM.from_pretrained(tiny_models[0].weights_source, torch_dtype=torch.float32)
    yield model.eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runner(local_model: Any) -> BlockRunner:
    return BlockRunner(local_model)


def embedding_scale(model: Any) -> float:
    return float(model.model.embed_tokens.weight.detach().std())


def test_an_honest_span_recomputes_within_tolerance(local_model: Any, runner: BlockRunner) -> None:
    chunks = random_chunks(torch.Generator().manual_seed(1), 64, prompt=5, steps=6, scale=embedding_scale(local_model))
    result = verify_span(runner, honest_span(local_model, 0, 2, chunks))
    assert result.ok and result.steps == 7 and result.tokens == 11
    assert result.max_error < result.tolerance / 4


def test_a_server_with_weights_perturbed_by_one_percent_is_caught_at_its_first_step(
    local_model: Any, runner: BlockRunner
) -> None:
    poisoned = copy.deepcopy(local_model)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in poisoned.model.layers[2:4].parameters():
            parameter.mul_(1 + 0.01 * torch.randn(parameter.shape, generator=generator))
    chunks = random_chunks(generator, 64, prompt=4, steps=3, scale=embedding_scale(local_model))
    result = verify_span(runner, honest_span(poisoned, 2, 4, chunks, peer_id="poisoned"))
    assert not result.ok and result.first_bad_step == 0
    assert result.max_error > 100 * result.tolerance


def test_a_server_that_returns_its_inputs_unchanged_is_caught(local_model: Any, runner: BlockRunner) -> None:
    chunks = random_chunks(torch.Generator().manual_seed(3), 64, prompt=3, steps=2, scale=embedding_scale(local_model))
    result = verify_span(runner, recorded("echo", 0, 2, chunks, chunks))
    assert not result.ok and result.first_bad_step == 0


def test_a_server_honest_at_prefill_that_skips_a_later_step_is_caught_at_that_step(
    local_model: Any, runner: BlockRunner
) -> None:
    chunks = random_chunks(torch.Generator().manual_seed(4), 64, prompt=3, steps=4, scale=embedding_scale(local_model))
    outputs = run_incrementally(local_model.model.layers[0:2], chunks)
    outputs[3] = torch.zeros_like(outputs[3])
    result = verify_span(runner, recorded("lazy", 0, 2, chunks, outputs))
    assert result.first_bad_step == 3


def test_a_thousand_honest_verifications_give_no_false_positive(local_model: Any, runner: BlockRunner) -> None:
    """Spans of 1-4 blocks, prompts of 1-12 positions and up to 12 decode steps, as servers compute them
    (step by step, KV cache); the worst honest error is reported against the tolerance."""
    generator = torch.Generator().manual_seed(5)
    scale = embedding_scale(local_model)
    worst, started = 0.0, time.monotonic()
    for index in range(1000):
        start = index % 4
        end = start + 1 + (index // 4) % (4 - start)
        chunks = random_chunks(generator, 64, prompt=1 + index % 12, steps=index % 13, scale=scale)
        result = verify_span(runner, honest_span(local_model, start, end, chunks))
        assert result.ok, f"false positive at verification {index}: {result}"
        worst = max(worst, result.max_error / result.tolerance)
    assert worst < 0.25  # a margin of 4x at least over the worst honest error seen
    print(f"1000 honest verifications in {time.monotonic() - started:.1f}s, worst error {worst:.4f} x tolerance")


def test_tolerance_grows_with_the_dtypes_epsilon_and_the_blocks_up_to_its_cap() -> None:
    assert tolerance_for("float32", 1) < tolerance_for("float16", 1) < tolerance_for("bfloat16", 1)
    assert tolerance_for("float32", 4) == 2 * tolerance_for("float32", 1)
    assert tolerance_for("bfloat16", 80) == tolerance_for("float16", 80) == 0.5
    with pytest.raises(ValueError, match="int8"):
        tolerance_for("int8", 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16_bit_honest_server_passes_and_one_that_skips_its_blocks_is_caught(
    local_model: Any, runner: BlockRunner, dtype: torch.dtype
) -> None:
    """A server computing in 16 bits differs from the float32 recomputation by its rounding; one that returns
    its inputs differs by the blocks' whole effect."""
    name = str(dtype).removeprefix("torch.")
    server = copy.deepcopy(local_model).to(dtype)
    generator = torch.Generator().manual_seed(6)
    for index in range(40):
        start = index % 4
        end = start + 1 + (index // 4) % (4 - start)
        chunks = [
            c.to(dtype) for c in random_chunks(generator, 64, 1 + index % 9, index % 7, embedding_scale(local_model))
        ]
        outputs = run_incrementally(server.model.layers[start:end], chunks)
        honest = verify_span(runner, recorded("honest", start, end, chunks, outputs, dtype=name))
        assert honest.ok and honest.max_error < honest.tolerance / 3, honest
        assert not verify_span(runner, recorded("echo", start, end, chunks, chunks, dtype=name)).ok


def test_bfloat16_states_survive_the_round_trip_through_base64() -> None:
    from mesh.session import tensor_b64

    states = torch.randn(3, 8).to(torch.bfloat16)
    assert torch.equal(decode_tensor(tensor_b64(states), "bfloat16", 8), states)
