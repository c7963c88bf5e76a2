"""The held-out set through the whole system: SmolLM2-135M-Instruct served by a swarm, every request sent to
`POST /v1/chat/completions` with the openai package, every reply checked as a buyer would check it.

bench/data/structured_holdout.json holds 12 JSON schemas (`response_format` json_schema, strict) and 6 tool
definitions (`tools` with tool_choice required, a named function, or auto, and parallel_tool_calls), none of which
appears in the tests or the other benchmarks. A schema's reply must parse and validate against its schema
(formats checked too); a tool request's reply must be calls that name an offered function (the named one, when
tool_choice names one; at most one call without parallel_tool_calls) with arguments valid against its
parameters, or text where tool_choice is auto (cut by max_tokens or not). A JSON reply cut by max_tokens cannot
be complete: it is counted and shown apart (docs/structured-outputs.md says so).
bench/check_structured_outputs.py checks another set against the worker's grammar and sampler without a swarm.

Run against a system already serving SmolLM2 (`make run`, which prints its key):
    .venv/bin/python bench/structured_holdout.py --url http://127.0.0.1:8100 --key fm_...
or let it start one of its own (private Redis and PostgreSQL, SmolLM2 over two servers, no chain; a minute or
two on a CPU): `.venv/bin/python bench/structured_holdout.py`. Exits 1 if a complete reply fails to validate.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO / "bench" / "data" / "structured_holdout.json"
MODEL_ID = "smollm2-135m-instruct"
MAX_TOKENS = 512
SEED = 7


def _valid(instance: object, schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(instance)


def check_schema_reply(case: dict[str, Any], content: str | None) -> str:
    """What the reply is; raises if it does not parse or validate."""
    value = json.loads(content or "")
    _valid(value, case["schema"])
    return "valid JSON"


def check_tool_reply(case: dict[str, Any], message: Any) -> str:
    """What the reply is; raises if a call is not one the request allows."""
    choice = case.get("tool_choice", "auto")
    calls = message.tool_calls or []
    if not calls:
        if choice != "auto":
            raise AssertionError(f"tool_choice {choice!r} but the reply is text: {message.content!r}")
        return "text"
    parameters = {t["function"]["name"]: t["function"]["parameters"] for t in case["tools"]}
    if isinstance(choice, dict) and any(c.function.name != choice["function"]["name"] for c in calls):
        raise AssertionError(f"tool_choice names {choice['function']['name']} but the reply calls others")
    if case.get("parallel_tool_calls") is False and len(calls) > 1:
        raise AssertionError(f"{len(calls)} calls without parallel_tool_calls")
    for call in calls:
        _valid(json.loads(call.function.arguments), parameters[call.function.name])
    return f"{len(calls)} valid call(s): " + ", ".join(f"{c.function.name}({c.function.arguments})" for c in calls)


def request_of(case: dict[str, Any], kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": case["question"]}],
        "max_tokens": MAX_TOKENS,
        "seed": SEED,
    }
    if kind == "schema":
        schema = {"name": case["name"], "schema": case["schema"], "strict": True}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        body["tools"] = case["tools"]
        body.update({k: case[k] for k in ("tool_choice", "parallel_tool_calls") if k in case})
    return body


async def run(url: str, key: str) -> int:
    data = json.loads(DATA.read_text())
    cases = [("schema", c) for c in data["schemas"]] + [("tools", c) for c in data["tools"]]
    passed = failed = cut = 0
    tokens = 0
    started = time.monotonic()
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600) as client:
        await _wait_until_served(client)
        for kind, case in cases:
            reply = await client.chat.completions.create(**request_of(case, kind))
            choice = reply.choices[0]
            tokens += reply.usage.completion_tokens if reply.usage else 0
            shown = choice.message.content or ""
            text_allowed = kind == "tools" and case.get("tool_choice", "auto") == "auto" and not shown.startswith("{")
            if choice.finish_reason == "length" and not (text_allowed and not choice.message.tool_calls):
                cut += 1
                print(f"CUT   {kind:6} {case['name']}: max_tokens reached: {shown[:120]!r}", flush=True)
                continue
            try:
                if kind == "schema":
                    what = check_schema_reply(case, choice.message.content)
                else:
                    what = check_tool_reply(case, choice.message)
            except (AssertionError, ValueError, KeyError, jsonschema.ValidationError) as exc:
                failed += 1
                print(f"FAIL  {kind:6} {case['name']}: {type(exc).__name__}: {str(exc)[:200]} in {shown[:200]!r}")
                continue
            passed += 1
            print(f"ok    {kind:6} {case['name']}: {what[:160]} | {shown[:120]!r}", flush=True)
    complete = len(cases) - cut
    seconds = time.monotonic() - started
    schemas, tools = len(data["schemas"]), len(data["tools"])
    print(
        f"\n{passed}/{complete} complete replies parse and validate ({schemas} schemas, {tools} tool definitions); "
        f"{cut} cut by max_tokens; {tokens} tokens in {seconds:.0f} s"
    )
    return 1 if failed else 0


async def _wait_until_served(client: openai.AsyncOpenAI, timeout_s: float = 300) -> None:
    """Until the gateway listens and the model's swarm is healthy (503 until a worker has published a snapshot)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
            )
            return
        except (openai.APIStatusError, openai.APIConnectionError) as exc:  # the gateway may not listen yet
            if getattr(exc, "status_code", 503) != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(2)


@contextmanager
def own_system() -> Iterator[tuple[str, str]]:
    """SmolLM2 served on a private Redis and PostgreSQL (never a developer's `make run` state): gateway URL, key."""
    from devstack.postgres_server import EmbeddedPostgres
    from devstack.redis_server import RedisServer
    from devstack.system import LocalSystem, SystemPlan
    from mesh.ports import free_port
    from mesh.settings import MeshSettings

    work = Path(tempfile.mkdtemp(prefix="far-mesh-holdout-"))
    work.chmod(0o755)  # embedded PostgreSQL runs as its own user
    redis_server = RedisServer(work / "redis").start()
    postgres = EmbeddedPostgres(work / "postgres").start()
    os.environ.update({"REDIS_URL": redis_server.url, "POSTGRES_URL": postgres.dsn("far_mesh")})
    plan = SystemPlan(
        state_dir=work / "state",
        cache_dir=MeshSettings.from_env().cache_dir,
        gateway_port=free_port(),
        portal_port=free_port(),
        real_models=True,
        env={"HF_HUB_OFFLINE": "1", "GATEWAY_RATE_LIMIT_PER_MINUTE": "1000"},
    )
    try:
        with LocalSystem(plan) as system:
            yield system.gateway_url, system.api_key
    finally:
        postgres.stop()
        redis_server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running gateway serving smollm2-135m-instruct (default: start a system)")
    parser.add_argument("--key", help="its API key (with --url)")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the results
    if args.url:
        if not args.key:
            parser.error("--url needs --key")
        return asyncio.run(run(args.url, args.key))
    from devstack.harness.interrupts import interrupt_on_signals

    interrupt_on_signals("structured_holdout")
    with own_system() as (url, key):
        return asyncio.run(run(url, key))


if __name__ == "__main__":
    sys.exit(main())
