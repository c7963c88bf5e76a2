"""Local swarm start-up and generation speed, each against a baseline measured in the same run.

1. Start-up: a `LocalSwarm` of the 4-block tiny model split over 2 servers, from `start()` until every server
   is announced online in the DHT. Baseline: one fresh interpreter importing `mesh.compat` (torch, transformers,
   hivemind, petals), the part of a server's start no swarm code can avoid.
2. Generation: 20 greedy tokens, one inference-session step per token, through the swarm (client opened by
   `mesh.client.open_client`) vs the same model run locally with transformers (`generate`, KV cache).
   Both produce the same tokens (checked here too).

    .venv/bin/python bench/bench_swarm.py [--repeats 3] [--tokens 20]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from mesh.client import open_client  # noqa: E402
from mesh.local_swarm import LocalSwarm, split_plans  # noqa: E402
from mesh.tiny_models import ensure_tiny_models  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "far-mesh"
PROMPT = "The mesh streams tokens: café 🚀"


def import_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", "import mesh.compat"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=20)
    args = parser.parse_args()

    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(1)  # as each swarm server runs (OMP_NUM_THREADS=1), so the comparison is like for like
    spec = ensure_tiny_models(CACHE_DIR)[0]
    baseline = statistics.median(import_seconds() for _ in range(args.repeats))

    startups = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as work_dir:
            swarm = LocalSwarm(split_plans(spec, 2), work_dir=Path(work_dir))
            started = time.perf_counter()
            with swarm:
                startups.append(time.perf_counter() - started)
    startup = statistics.median(startups)
    print(f"swarm start-up (2 servers, all blocks served): median {startup:.1f} s over {args.repeats}")
    print(f"  baseline, one interpreter importing mesh.compat: {baseline:.1f} s; ratio {startup / baseline:.1f}x")

    local = LlamaForCausalLM.from_pretrained(spec.weights_source, torch_dtype=torch.float32)
    with LocalSwarm(split_plans(spec, 2)) as swarm:
        opened = time.perf_counter()
        client = open_client(spec, swarm.initial_peers)
        print(f"client open (config, tokenizer, DHT join): {time.perf_counter() - opened:.2f} s")
        input_ids = client.tokenizer(PROMPT, return_tensors="pt").input_ids
        try:
            swarm_rates, local_rates = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                tokens = []
                with client.model.inference_session(max_length=input_ids.shape[1] + args.tokens) as session:
                    step_input = input_ids
                    for _ in range(args.tokens):
                        out = client.model.generate(step_input, max_new_tokens=1, do_sample=False, session=session)
                        tokens.append(int(out[0, -1]))
                        step_input = None
                swarm_rates.append(args.tokens / (time.perf_counter() - started))

                started = time.perf_counter()
                expected = local.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    max_new_tokens=args.tokens,
                    do_sample=False,
                    pad_token_id=client.tokenizer.eos_token_id,
                )[0, input_ids.shape[1] :].tolist()
                local_rates.append(args.tokens / (time.perf_counter() - started))
                assert tokens == expected, "the swarm's tokens differ from the local model's"
        finally:
            client.close()
    swarm_rate, local_rate = statistics.median(swarm_rates), statistics.median(local_rates)
    print(f"{args.tokens} greedy tokens through the swarm: median {swarm_rate:.1f} tokens/s")
    print(f"  baseline, same model locally: {local_rate:.1f} tokens/s; swarm is {local_rate / swarm_rate:.1f}x slower")


if __name__ == "__main__":
    interrupt_on_signals("bench_swarm")
    main()
