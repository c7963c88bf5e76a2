"""verifier.recompute on span I/O recorded without a swarm: honest spans pass, cheating ones are caught."""

import base64
import copy
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from mesh.session import tensor_b64
from protocol.catalog import ModelSpec
from protocol.verification import RecordedSpan
from tests.verifier.honest import honest_span, random_chunks, recorded, run_incrementally, sixteen_bit_span
from verifier.recompute import BlockRunner, decode_tensor, verify_span
from verifier.tolerance import MAX_TOLERANCE, tolerance_for
from verifier.unverifiable import RecordingUnusable


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


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_thousand_honest_verifications_give_no_false_positive(
    local_model: Any, runner: BlockRunner, dtype: str
) -> None:
    """Spans of 1-4 blocks, prompts of 1-12 positions and up to 12 decode steps, as servers compute them (step by
    step, KV cache): a 16-bit server gets the worker's float32 inputs, casts them to its dtype, runs its blocks
    in it and replies in it, announcing that dtype. The false positives and the worst honest error against the
    tolerance are printed per dtype (docs/verification.md quotes them)."""
    server = local_model if dtype == "float32" else copy.deepcopy(local_model).to(getattr(torch, dtype))
    generator = torch.Generator().manual_seed(5)
    scale = embedding_scale(local_model)
    worst, false_positives, started = 0.0, 0, time.monotonic()
    for index in range(1000):
        start = index % 4
        end = start + 1 + (index // 4) % (4 - start)
        chunks = random_chunks(generator, 64, prompt=1 + index % 12, steps=index % 13, scale=scale)
        result = verify_span(runner, sixteen_bit_span(server, start, end, chunks))
        false_positives += not result.ok
        worst = max(worst, result.max_error / result.tolerance)
    print(
        f"1000 honest {dtype} spans in {time.monotonic() - started:.1f}s: {false_positives} false positives, "
        f"worst error {worst:.4f} x tolerance"
    )
    assert false_positives == 0
    assert worst < (0.25 if dtype == "float32" else 0.5)  # a margin of 4x (2x where bfloat16's cap decides)


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
        honest = verify_span(runner, recorded("honest", start, end, chunks, outputs, announced=name))
        assert honest.ok and honest.max_error < honest.tolerance / 3, honest
        assert not verify_span(runner, recorded("echo", start, end, chunks, chunks, announced=name)).ok


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_span_sent_in_float32_and_answered_in_16_bits_is_decoded_with_each_tensors_own_dtype(
    local_model: Any, runner: BlockRunner, dtype: str
) -> None:
    """What every session through a 16-bit server records: the worker's float32 inputs, the server's 16-bit
    reply. One label for both made the verifier misread one of them and drop the check."""
    server = copy.deepcopy(local_model).to(getattr(torch, dtype))
    chunks = random_chunks(torch.Generator().manual_seed(7), 64, prompt=5, steps=4, scale=embedding_scale(local_model))
    span = sixteen_bit_span(server, 1, 3, chunks)
    assert {(s.inputs_dtype, s.outputs_dtype) for s in span.steps} == {("float32", dtype)}
    result = verify_span(runner, span)
    assert result.ok and result.cause is None and result.tolerance == tolerance_for(dtype, 2)


def test_the_tolerance_follows_the_announced_dtype_not_the_reply(local_model: Any, runner: BlockRunner) -> None:
    """A server announcing float32 that replies with bfloat16's rounding is judged by float32's tolerance: no
    server chooses its own tolerance by the dtype it replies in."""
    server = copy.deepcopy(local_model).to(torch.bfloat16)
    chunks = random_chunks(torch.Generator().manual_seed(8), 64, prompt=4, steps=3, scale=embedding_scale(local_model))
    coarse = sixteen_bit_span(server, 0, 2, chunks).model_copy(update={"announced_dtype": "float32"})
    result = verify_span(runner, coarse)
    assert not result.ok and result.cause == "over-tolerance" and result.tolerance == tolerance_for("float32", 2)


def _replace_step(span: RecordedSpan, index: int, **changes: Any) -> RecordedSpan:
    steps = list(span.steps)
    steps[index] = steps[index].model_copy(update=changes)
    return span.model_copy(update={"steps": tuple(steps)})


def _float64_reply(span: RecordedSpan) -> RecordedSpan:
    outputs = decode_tensor(span.steps[1].outputs_b64, span.steps[1].outputs_dtype, span.hidden_size)
    return _replace_step(span, 1, outputs_dtype="float64", outputs_b64=tensor_b64(outputs.double()))


def _short_reply(span: RecordedSpan) -> RecordedSpan:
    outputs = decode_tensor(span.steps[1].outputs_b64, span.steps[1].outputs_dtype, span.hidden_size)
    return _replace_step(span, 1, tokens=2, inputs_b64=tensor_b64(torch.randn(2, 64)), outputs_b64=tensor_b64(outputs))


UNVERIFIABLE_REPLIES: dict[str, tuple[Callable[[RecordedSpan], RecordedSpan], str, int]] = {
    "bytes that are no whole row": (
        lambda span: _replace_step(span, 1, outputs_b64=base64.b64encode(b"\0" * 10).decode()),
        "undecodable",
        1,
    ),
    "not base64": (lambda span: _replace_step(span, 2, outputs_b64="%%%"), "undecodable", 2),
    "a dtype no server computes in": (_float64_reply, "unknown-dtype", 1),
    "an unannounced dtype": (lambda span: span.model_copy(update={"announced_dtype": None}), "unknown-dtype", 0),
    "an announced dtype without a tolerance": (
        lambda span: span.model_copy(update={"announced_dtype": "int8"}),
        "unknown-dtype",
        0,
    ),
    "fewer positions than it was sent": (_short_reply, "missing-positions", 1),
    "more positions than it was sent": (
        lambda span: _replace_step(span, 0, outputs_b64=tensor_b64(torch.randn(9, 64))),
        "wrong-shape",
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(UNVERIFIABLE_REPLIES))
def test_a_reply_that_cannot_be_verified_is_a_mismatch_of_its_server_with_its_cause(
    local_model: Any, runner: BlockRunner, case: str
) -> None:
    """Dropping such a check would let any cheat switch verification off by replying oddly on purpose."""
    spoil, cause, step = UNVERIFIABLE_REPLIES[case]
    chunks = random_chunks(torch.Generator().manual_seed(9), 64, prompt=3, steps=2, scale=embedding_scale(local_model))
    result = verify_span(runner, spoil(honest_span(local_model, 0, 2, chunks, peer_id="odd")))
    assert (result.peer_id, result.ok, result.cause, result.first_bad_step) == ("odd", False, cause, step)
    assert result.max_error == float("inf") and 0 < result.tolerance <= MAX_TOLERANCE


@pytest.mark.parametrize(
    ("spoil", "cause"),
    [
        (lambda span: _replace_step(span, 1, inputs_b64=base64.b64encode(b"\0" * 10).decode()), "inputs-undecodable"),
        (lambda span: _replace_step(span, 1, inputs_dtype="int8"), "inputs-unknown-dtype"),
        (lambda span: _replace_step(span, 0, inputs_b64=tensor_b64(torch.randn(2, 64))), "inputs-wrong-shape"),
        (lambda span: span.model_copy(update={"hidden_size": 32}), "wrong-width"),
        (lambda span: span.model_copy(update={"start_block": 3, "end_block": 5}), "outside-model"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_recording_the_worker_got_wrong_convicts_nobody(
    local_model: Any, runner: BlockRunner, spoil: Callable[[RecordedSpan], RecordedSpan], cause: str
) -> None:
    """The inputs, the blocks and the width are the worker's own record: a server is not punished for them."""
    chunks = random_chunks(torch.Generator().manual_seed(10), 64, prompt=3, steps=2, scale=embedding_scale(local_model))
    with pytest.raises(RecordingUnusable) as raised:
        verify_span(runner, spoil(honest_span(local_model, 0, 2, chunks)))
    assert raised.value.cause == cause


def test_a_server_returning_nan_is_convicted_and_cannot_frame_the_honest_server_after_it(
    local_model: Any, runner: BlockRunner
) -> None:
    chunks = random_chunks(torch.Generator().manual_seed(11), 64, prompt=4, steps=3, scale=embedding_scale(local_model))
    poisoned = run_incrementally(local_model.model.layers[0:2], chunks)
    poisoned[0] = poisoned[0].clone()
    poisoned[0][0, 0] = float("nan")
    assert not verify_span(runner, recorded("cheat", 0, 2, chunks, poisoned)).ok
    downstream = run_incrementally(local_model.model.layers[2:4], poisoned)  # honest work on what it was sent
    with pytest.raises(RecordingUnusable) as raised:
        verify_span(runner, recorded("honest", 2, 4, poisoned, downstream))
    assert raised.value.cause == "inputs-non-finite"


def test_bfloat16_states_survive_the_round_trip_through_base64() -> None:
    from mesh.session import tensor_b64

    states = torch.randn(3, 8).to(torch.bfloat16)
    assert torch.equal(decode_tensor(tensor_b64(states), "bfloat16", 8), states)


def test_every_cause_of_a_mismatch_is_one_the_ledger_accepts() -> None:
    from pathlib import Path
    from typing import get_args

    from verifier.unverifiable import Cause

    migration = (Path(__file__).parents[2] / "schema" / "0018_verification_causes.sql").read_text()
    accepted = migration.split("cause IN (", 1)[1].split(")", 1)[0]
    assert sorted(get_args(Cause)) == sorted(word.strip().strip("'") for word in accepted.split(","))
