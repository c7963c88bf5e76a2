"""SmolLM2-135M-Instruct through the local swarm against the same model in one process, from one run.

`make run` serves the real model split over two servers (blocks 0:15 and 15:30), so every token crosses both
servers and the DHT-routed client. This measures what that costs, each number against its baseline from the
same run on the same machine:

1. Start-up: the two-server SmolLM2 swarm from `start()` until both halves are announced online, against the
   same swarm shape of the 4-block tiny model (what the tests' `two_server_swarm` starts).
2. Generation, greedy, one inference-session step per token (`mesh.client.open_client`, as the worker runs it):
   the first token (prefill of the prompt + one step) and the steady state (tokens/s over the later tokens),
   against the model run locally with transformers and a KV cache, one thread (as each server runs), the same
   prompt and the same number of tokens. The tokens must be the same (checked).
3. Memory: each server's proportional set size summed over its process group (the server, its forked
   connection handlers, its DHT process and `p2pd`; shared pages counted once), and its server process's resident
   set, against this process's growth (RSS) from loading the model locally.

    .venv/bin/python bench/bench_real_model.py [--tokens 32] [--repeats 3]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from mesh.client import open_client  # noqa: E402
from mesh.gguf_checkpoint import SMOLLM2, ensure_checkpoint, spec_for  # noqa: E402
from mesh.local_swarm import LocalSwarm, group_members, split_plans  # noqa: E402
from mesh.tiny_models import ensure_tiny_models  # noqa: E402

CACHE_DIR = Path(os.environ.get("FAR_MESH_CACHE_DIR", REPO / ".cache" / "far-mesh"))
PROMPT = "The capital of France is Paris. Its most famous landmarks are"


def rss_bytes(pid: int) -> int:
    """A process's resident set, from /proc (0 for one that is gone)."""
    return _proc_kib(f"/proc/{pid}/status", "VmRSS:") * 1024


def pss_bytes(pid: int) -> int:
    """A process's proportional share of its resident pages: a server's forked handlers share most of its pages,
    so summing their resident sets would count the weights several times; summing PSS counts them once."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:") * 1024


def _proc_kib(path: str, field: str) -> int:
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith(field)), 0)


def startup_seconds(swarm: LocalSwarm) -> float:
    started = time.perf_counter()
    swarm.start()
    return time.perf_counter() - started


def swarm_tokens(client: Any, input_ids: Any, tokens: int) -> tuple[list[int], float, float]:
    """(token ids, seconds to the first token, seconds for the rest) through the swarm, one step per token."""
    ids: list[int] = []
    started = time.perf_counter()
    first = 0.0
    with client.model.inference_session(max_length=input_ids.shape[1] + tokens) as session:
        step_input = input_ids
        for _ in range(tokens):
            out = client.model.generate(step_input, max_new_tokens=1, do_sample=False, session=session)
            ids.append(int(out[0, -1]))
            step_input = None
            if len(ids) == 1:
                first = time.perf_counter() - started
    return ids, first, time.perf_counter() - started - first


def local_tokens(model: Any, input_ids: Any, tokens: int) -> tuple[list[int], float, float]:
    """The same, locally: a prefill forward, then one forward per token over the KV cache."""
    import torch

    ids: list[int] = []
    started = time.perf_counter()
    first = 0.0
    with torch.no_grad():
        out = model(input_ids, use_cache=True)
        for _ in range(tokens):
            ids.append(int(out.logits[0, -1].argmax()))
            if len(ids) == 1:
                first = time.perf_counter() - started
            if len(ids) == tokens:
                break
            out = model(torch.tensor([[ids[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    return ids, first, time.perf_counter() - started - first


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)  # as each swarm server runs (OMP_NUM_THREADS=1), so the comparison is like for like
    spec = spec_for(SMOLLM2, ensure_checkpoint(CACHE_DIR))
    tiny = ensure_tiny_models(CACHE_DIR)[0]

    with tempfile.TemporaryDirectory() as work_dir:
        tiny_swarm = LocalSwarm(split_plans(tiny, 2), work_dir=Path(work_dir))
        try:
            tiny_start = startup_seconds(tiny_swarm)
        finally:
            tiny_swarm.stop()

    before = rss_bytes(os.getpid())
    local = LlamaForCausalLM.from_pretrained(spec.weights_source, torch_dtype=torch.float32).eval()
    local_rss = rss_bytes(os.getpid()) - before

    with tempfile.TemporaryDirectory() as work_dir:
        swarm = LocalSwarm(split_plans(spec, 2), work_dir=Path(work_dir))
        try:
            start = startup_seconds(swarm)
            client = open_client(spec, swarm.initial_peers)
            try:
                input_ids = client.tokenizer(PROMPT, return_tensors="pt").input_ids
                runs = []
                for _ in range(args.repeats):
                    through, swarm_first, swarm_rest = swarm_tokens(client, input_ids, args.tokens)
                    alone, local_first, local_rest = local_tokens(local, input_ids, args.tokens)
                    assert through == alone, "the swarm's greedy tokens differ from the local model's"
                    runs.append((swarm_first, swarm_rest, local_first, local_rest))
                text = client.tokenizer.decode(through)
            finally:
                client.close()
            servers = [
                (s.name, sum(pss_bytes(pid) for pid in group_members(s.pid)), rss_bytes(s.pid)) for s in swarm.servers
            ]
        finally:
            swarm.stop()

    swarm_first, swarm_rest, local_first, local_rest = (statistics.median(r[i] for r in runs) for i in range(4))
    later = args.tokens - 1
    swarm_rate, local_rate = later / swarm_rest, later / local_rest
    prompt_tokens = len(input_ids[0])
    print(f"SmolLM2-135M-Instruct, {prompt_tokens}-token prompt, {args.tokens} greedy tokens, median of {args.repeats}")
    print(f"  reply: {text!r}")
    print(
        f"start-up, 2 servers (0:15, 15:30): {start:.1f} s; tiny 4-block model on 2 servers: {tiny_start:.1f} s; "
        f"ratio {start / tiny_start:.2f}x"
    )
    print(
        f"first token: swarm {swarm_first * 1000:.0f} ms, local {local_first * 1000:.0f} ms; "
        f"ratio {swarm_first / local_first:.1f}x"
    )
    print(
        f"steady state: swarm {swarm_rate:.1f} tokens/s, local {local_rate:.1f} tokens/s; "
        f"swarm is {local_rate / swarm_rate:.1f}x slower"
    )
    for name, group, main_process in servers:
        print(
            f"memory {name}: {group / 2**20:.0f} MiB (PSS of its process group; the server process's RSS "
            f"{main_process / 2**20:.0f} MiB); {group / local_rss:.2f}x the local model's {local_rss / 2**20:.0f} MiB"
        )
    total = sum(group for _, group, _ in servers)
    print(f"memory, both servers: {total / 2**20:.0f} MiB; {total / local_rss:.2f}x the model loaded in one process")


if __name__ == "__main__":
    interrupt_on_signals("bench_real_model")
    main()
