"""The verifier's tolerance on real weights (SmolLM2-135M-Instruct), without a swarm: honest spans of the two
halves `make run` serves pass in float32 and bfloat16, with real text's hidden states as inputs, and a server
that skips its blocks is caught. The false-positive rate over many spans is measured in
bench/bench_verifier_real_weights.py, not here (#27 item 3)."""

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from protocol.catalog import ModelSpec
from tests.fixtures.workers import local_model
from tests.verifier.honest import recorded, run_incrementally, sixteen_bit_span
from verifier.recompute import BlockRunner, verify_span

TEXT = "The capital of France is Paris. It is known for"
PREFILL = 7
"""Positions prefilled at once; every later position is one decode step, as a server runs them."""


@pytest.fixture(scope="module")
def model(smollm2: ModelSpec) -> Iterator[Any]:
    """The float32 model, shared with the generation tests' reference (`tests.fixtures.workers.local_model`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield local_model(smollm2)[1]
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def halves(model: Any, smollm2: ModelSpec) -> dict[tuple[int, int], list[torch.Tensor]]:
    """Each half's inputs: the text's embeddings for blocks 0:15, and what 0:15 makes of them for 15:30."""
    ids = torch.tensor(local_model(smollm2)[0](TEXT)["input_ids"])
    with torch.no_grad():
        embedded = model.model.embed_tokens(ids)
    chunks = [embedded[:PREFILL], *(embedded[i : i + 1] for i in range(PREFILL, len(ids)))]
    return {(0, 15): chunks, (15, 30): run_incrementally(model.model.layers[0:15], chunks)}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_honest_halves_of_the_real_model_pass_well_within_tolerance(
    model: Any, halves: dict[tuple[int, int], list[torch.Tensor]], dtype: str
) -> None:
    runner = BlockRunner(model)
    server = model if dtype == "float32" else copy.deepcopy(model).to(torch.bfloat16)
    for (start, end), chunks in halves.items():
        # A server casts its inputs to its dtype, runs its blocks in it and replies in it (a no-op in float32).
        verdict = verify_span(runner, sixteen_bit_span(server, start, end, chunks))
        assert verdict.ok and verdict.max_error < verdict.tolerance / 4, verdict


def test_a_server_that_skips_its_half_of_the_real_model_is_caught(
    model: Any, halves: dict[tuple[int, int], list[torch.Tensor]]
) -> None:
    chunks = halves[(15, 30)]
    verdict = verify_span(BlockRunner(model), recorded("lazy", 15, 30, chunks, chunks, announced="bfloat16"))
    assert not verdict.ok and verdict.first_bad_step == 0
