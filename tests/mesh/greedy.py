"""Greedy decoding through a swarm and locally, for the tests that compare the two."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from transformers import LlamaForCausalLM

from mesh.client import MeshClient

T = TypeVar("T")
Span = tuple[str, int, int]
"""(peer id, start block, end block) of a server span that served a step."""


def off_main_thread(call: Callable[..., T], *args: Any) -> T:
    """Run a Petals call on a fresh thread: hivemind's futures would leave an unclosed event loop on the main one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call, *args).result()


def greedy_through_swarm(client: MeshClient, input_ids: torch.Tensor, new_tokens: int) -> tuple[list[int], set[Span]]:
    """Greedy tokens from one new inference session, one step per token, and every span that served a step."""
    spans: set[Span] = set()
    tokens: list[int] = []
    with client.model.inference_session(max_length=input_ids.shape[1] + new_tokens) as session:
        step_input: torch.Tensor | None = input_ids
        for _ in range(new_tokens):
            output = client.model.generate(step_input, max_new_tokens=1, do_sample=False, session=session)
            tokens.append(int(output[0, -1]))
            step_input = None  # the session already holds every token so far
            # Copied after every step: petals replaces the list in place on failover and clears it on close.
            spans |= {(str(s.span.peer_id), s.span.start, s.span.end) for s in session._server_sessions}
    return tokens, spans


def greedy_locally(client: MeshClient, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
    """The same model's greedy tokens computed in this process by transformers alone."""
    model = LlamaForCausalLM.from_pretrained(client.spec.weights_source, torch_dtype=torch.float32)
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=client.tokenizer.eos_token_id,
    )
    return [int(token) for token in output[0, input_ids.shape[1] :]]
