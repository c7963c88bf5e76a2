"""A plain Petals HTTP front end, the baseline of `bench_http_baseline.py`: one process, one Petals client, and the
generation loop answering HTTP, with nothing of ours around it (no queue, no Redis, no lease, no billing).

`POST /generate` with `{"prompt", "max_tokens"}` streams Server-Sent Events, one `data: {"token", "index"}` per
greedy token and a final `data: {"done": true, "tokens_generated"}`: what a minimal streaming front end to
Petals is. Each step runs in a thread pool as large as the concurrent sessions it serves (Petals' client API
blocks), the token is the logits' argmax, and its text is the token decoded alone: the least a front end can
do per token, so the baseline is a generous one. Written for this project (no other project's code), with the
same session driver the worker and `bench_worker.py`'s direct path use (`mesh.session.SwarmSession`).

Run by the benchmark as `python bench/plain_petals_http.py --port P --model-json '{...}' --peers A,B`; it prints
`ready` once it serves.
"""

import argparse
import asyncio
import faulthandler
import json
import signal
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from mesh.client import MeshClient, open_client  # noqa: E402
from mesh.session import SwarmSession  # noqa: E402
from protocol.catalog import ModelSpec  # noqa: E402

MAX_SESSIONS = 16


def _step(session: SwarmSession, feed: list[int]) -> int:
    return int(torch.argmax(session.step(feed).logits))


def build_app(client: MeshClient) -> Starlette:
    pool = ThreadPoolExecutor(MAX_SESSIONS, thread_name_prefix="plain-petals")
    tokenizer = client.tokenizer

    async def generate(request: Request) -> StreamingResponse:
        body = await request.json()
        prompt_ids = list(tokenizer(str(body["prompt"]))["input_ids"])
        max_tokens = int(body.get("max_tokens", 16))
        loop = asyncio.get_running_loop()

        async def events() -> AsyncIterator[str]:
            session = SwarmSession(client.model, max_length=len(prompt_ids) + max_tokens)
            feed = prompt_ids
            try:
                for index in range(max_tokens):
                    token_id = await loop.run_in_executor(pool, _step, session, feed)
                    text = tokenizer.decode([token_id], skip_special_tokens=True)
                    yield f"data: {json.dumps({'token': text, 'index': index})}\n\n"
                    feed = [token_id]
                yield f"data: {json.dumps({'done': True, 'tokens_generated': max_tokens})}\n\n"
            finally:
                await loop.run_in_executor(pool, session.close)

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/generate", generate, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-json", required=True)
    parser.add_argument("--peers", required=True, help="the swarm's initial peers, comma-separated")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the driver asks for every thread's stack on a stall
    client = open_client(ModelSpec.model_validate_json(args.model_json), args.peers.split(","))
    config = uvicorn.Config(build_app(client), host="127.0.0.1", port=args.port, log_level="warning")
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        print("ready", flush=True)
        await task

    try:
        asyncio.run(serve())
    finally:
        client.close()


if __name__ == "__main__":
    main()
