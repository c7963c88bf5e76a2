"""The soak's buyers: a steady mix of clients, each request followed until it ends, however many faults it meets.

Kinds: `sse` (POST /inference/generate, resumed after a broken connection with GET .../stream and Last-Event-ID),
`sse_repost` (resumed by POSTing the same request id again, which re-attaches and replays), `cancel` (SSE, then
POST .../cancel after a few tokens and read to the end), `openai_stream` and `openai` (chat completions,
streaming with usage or not, retried by re-POSTing the request id), and `budget` (SSE on a key with a small
total budget: once it is spent, 402). A request that has not ended within `REQUEST_DEADLINE_S` is `hung`: the
first checker's failure. Retrying is what a careful client does; each retry is counted.

The system may run several gateway replicas: the buyers spread their requests over them (each client starts
each request on the next one), and a request whose gateway broke its connection or answered 5xx is resumed or
re-POSTed on the next gateway, as a load balancer routes around a replica that is down (`GatewayChoice`).
"""

import asyncio
import json
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from devstack.harness.sse import UnexpectedStatus, stream_events

KINDS = ("sse", "sse_repost", "cancel", "openai_stream", "openai", "budget")
REQUEST_DEADLINE_S = 240.0
"""Longer than any recovery the schedule can cause (a restart serves within a minute or two)."""
RETRY_PAUSE_S = 0.5
RETRIED_STATUSES = {429, 500, 502, 503, 504}
PROMPT = "The soak keeps the mesh busy while its processes die"
GENERATION_FAILED = re.compile(r"generation failed \((\w+)\)")
"""How the OpenAI routes' 502 names the error a generation ended with (gateway/openai_api.py)."""


@dataclass
class Request:
    request_id: str
    kind: str
    max_tokens: int
    started: float
    ending: str = "running"
    """"done:<status>", "error:<code>", "http:<status>" or "hung"."""
    tokens: dict[int, int] = field(default_factory=dict)
    """Index -> token id, as the client received them (SSE kinds)."""
    delivered: int = 0
    reported: int | None = None
    """tokens_generated as the final event (or OpenAI's usage) said."""
    attempts: int = 0
    accepted: bool = False
    """The gateway answered 200 at least once: the request was queued, so the ledger must have it."""
    ended: float | None = None
    detail: str = ""
    """The refusal's error code, for an `http:` ending."""
    gateways: set[int] = field(default_factory=set)
    """The replicas (their indexes) it was sent to: more than one when it was resumed on another."""

    @property
    def ended_cleanly(self) -> bool:
        return self.ending.startswith(("done:", "error:", "http:"))


@dataclass
class GatewayChoice:
    """Which gateway replica a request's next attempt goes to: the one it started on until that one fails it
    (a broken connection, a 5xx), then the next, as a load balancer takes a failing replica out of rotation."""

    urls: Sequence[str]
    current: int
    request: Request

    def url(self, path: str) -> str:
        self.request.gateways.add(self.current)
        return self.urls[self.current] + path

    def failed(self) -> None:
        self.current = (self.current + 1) % len(self.urls)


@dataclass
class Buyers:
    urls: Sequence[str]
    key: str
    budget_key: str
    seed: int
    model_id: str
    requests: list[Request] = field(default_factory=list)

    async def run(self, clients: int, until: float) -> None:
        await asyncio.gather(*(self._client(i, until) for i in range(clients)))

    async def _client(self, number: int, until: float) -> None:
        rng = random.Random(f"{self.seed}-buyer-{number}")
        sent = 0
        while time.monotonic() < until:
            kind = rng.choice(KINDS)
            request = Request(f"soak-{uuid.UUID(int=rng.getrandbits(128)).hex[:20]}", kind, rng.randint(6, 40), 0.0)
            request.started = time.monotonic()
            self.requests.append(request)
            key = self.budget_key if kind == "budget" else self.key
            headers = {"Authorization": f"Bearer {key}"}
            timeout = httpx.Timeout(30.0, connect=5.0)
            gateway = GatewayChoice(self.urls, (number + sent) % len(self.urls), request)
            sent += 1
            async with httpx.AsyncClient(headers=headers, timeout=timeout) as client:
                try:
                    await asyncio.wait_for(self._follow(client, gateway, request, rng), REQUEST_DEADLINE_S)
                except TimeoutError:
                    request.ending = "hung"
            request.ended = time.monotonic()
            if request.ending.startswith("http:402"):
                await asyncio.sleep(1.0)  # a spent budget: the next request of this kind is refused too

    async def _follow(
        self, client: httpx.AsyncClient, gateway: GatewayChoice, request: Request, rng: random.Random
    ) -> None:
        if request.kind.startswith("openai"):
            await self._follow_openai(client, gateway, request)
        else:
            cancel_after = rng.randint(1, max(1, request.max_tokens // 2)) if request.kind == "cancel" else None
            await self._follow_sse(client, gateway, request, cancel_after)

    async def _follow_sse(
        self, client: httpx.AsyncClient, gateway: GatewayChoice, request: Request, cancel_after: int | None
    ) -> None:
        body = {"prompt": PROMPT, "max_tokens": request.max_tokens, "temperature": 0, "request_id": request.request_id}
        last_id: str | None = None
        cancelled = False
        while True:
            request.attempts += 1
            if last_id is None or request.kind == "sse_repost":
                events = stream_events(client, "POST", gateway.url("/inference/generate"), json=body)
            else:
                path = gateway.url(f"/inference/{request.request_id}/stream")
                events = stream_events(client, "GET", path, headers={"Last-Event-ID": last_id})
            try:
                async with aclosing(events) as stream:
                    async for _, (event_id, event) in stream:
                        request.accepted = True
                        if "token" in event:
                            request.tokens[event["index"]] = event["token_id"]
                            last_id = event_id or last_id
                            if cancel_after is not None and not cancelled and len(request.tokens) >= cancel_after:
                                cancelled = await _cancel(
                                    client, gateway.url(f"/inference/{request.request_id}/cancel")
                                )
                        elif "error" in event and not event_id:
                            break  # the gateway's own (stream_deadline, a lost Redis): resume for the real end
                        else:
                            request.reported = event.get("tokens_generated")
                            code = event["error"]["code"] if "error" in event else event.get("status")
                            request.ending = f"{'error' if 'error' in event else 'done'}:{code}"
                            request.delivered = len(request.tokens)
                            return
            except UnexpectedStatus as exc:
                status = exc.response.status_code
                if status in (204, 404):  # nothing after that event here, or unknown here: replay it all
                    last_id = None
                elif status not in RETRIED_STATUSES:
                    request.ending, request.detail = f"http:{status}", _refusal(exc.response)
                    request.delivered = len(request.tokens)
                    return
                else:
                    gateway.failed()
            except (httpx.TransportError, httpx.StreamError, json.JSONDecodeError):
                gateway.failed()
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _follow_openai(self, client: httpx.AsyncClient, gateway: GatewayChoice, request: Request) -> None:
        streaming = request.kind == "openai_stream"
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": request.max_tokens,
            "temperature": 0,
            "request_id": request.request_id,
            "stream": streaming,
        }
        if streaming:
            body["stream_options"] = {"include_usage": True}
        while True:
            request.attempts += 1
            try:
                if streaming:
                    chunks, request.ending, request.reported = 0, "running", None  # a re-POST replays it all
                    async for chunk in _openai_chunks(client, gateway.url("/v1/chat/completions"), body):
                        request.accepted = True
                        if "error" in chunk:
                            request.ending = f"error:{chunk['error'].get('code')}"
                            request.delivered = chunks
                            return
                        if chunk.get("usage"):
                            request.reported = chunk["usage"]["completion_tokens"]
                        chunks += token_chunks(chunk)
                        for choice in chunk.get("choices", []):
                            if choice.get("finish_reason"):
                                request.ending = f"done:{choice['finish_reason']}"
                    if request.reported is not None and request.ending != "running":
                        request.delivered = request.reported
                        return
                else:
                    response = await client.post(gateway.url("/v1/chat/completions"), json=body)
                    if response.status_code == 200:
                        request.accepted = True
                        reply = response.json()
                        request.reported = request.delivered = reply["usage"]["completion_tokens"]
                        request.ending = f"done:{reply['choices'][0]['finish_reason']}"
                        return
                    failed = _generation_failed(response)
                    if failed is not None:  # the request ran and ended in error: asking again answers the same
                        request.accepted, request.ending = True, f"error:{failed}"
                        return
                    raise UnexpectedStatus(response)
            except UnexpectedStatus as exc:
                if exc.response.status_code not in RETRIED_STATUSES:
                    request.ending, request.detail = f"http:{exc.response.status_code}", _refusal(exc.response)
                    return
                gateway.failed()
            except (httpx.TransportError, httpx.StreamError, json.JSONDecodeError, KeyError):
                gateway.failed()
            await asyncio.sleep(RETRY_PAUSE_S)


def token_chunks(chunk: dict[str, Any]) -> int:
    """How many generated tokens a streamed completion's chunk delivers: the gateway sends one chunk per token
    event (`gateway/openai_api.py`), its choice not yet finished, and its text "" while the worker holds back the
    bytes of an unfinished character or text that may become a stop sequence. Such a token is delivered and
    billed all the same, as the native SSE route's token event with its empty text is: counting only the chunks
    with text counted fewer tokens than were delivered (seed 33: two requests ended by `no_route` after 10 and 11
    tokens, 4 of them empty, were reported as billed 4 tokens they had not received). The ending chunk (its
    `finish_reason` set) and the usage chunk (no choices) carry no token. The soak asks for no tools, whose
    held-back call would arrive as one chunk."""
    return sum(choice.get("finish_reason") is None for choice in chunk.get("choices", []))


def _generation_failed(response: httpx.Response) -> str | None:
    """The error code of a 502 that says the generation itself failed ("generation failed (<code>): ..."), which
    is the request's own ending, final (re-POSTing its id answers it again), not a gateway in trouble."""
    if response.status_code != 502:
        return None
    try:
        found = GENERATION_FAILED.match(str(response.json()["error"]["message"]))
    except (ValueError, KeyError, TypeError):
        return None
    return found.group(1) if found else None


def _refusal(response: httpx.Response) -> str:
    """A refusal's error code (its body's start when it has none), so the report counts refusals by code."""
    try:
        error = response.json()["error"]
        return str(error.get("code") or error.get("type") or error)[:80]
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:80]


async def _cancel(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.post(url)).status_code < 300
    except httpx.TransportError:
        return False  # tried again at the next token


async def _openai_chunks(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Each JSON chunk of a streamed completion, through [DONE]."""
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise UnexpectedStatus(response)
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                if line == "data: [DONE]":
                    return
                yield json.loads(line[6:])
