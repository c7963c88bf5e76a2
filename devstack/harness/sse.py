"""A minimal SSE client of the gateway, as a client program would read it: one event at a time, with its id."""

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx

Event = tuple[str, dict[str, Any]]
"""(SSE event id, the event's JSON payload)."""


class UnexpectedStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}: {response.text[:300]}")
        self.response = response


async def stream_events(
    client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
) -> AsyncGenerator[tuple[httpx.Response, Event], None]:
    """Each SSE event of one request as it arrives; leaving the loop early closes the connection."""
    async with client.stream(method, path, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            raise UnexpectedStatus(response)
        event_id, data = "", []
        async for line in response.aiter_lines():
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                yield response, (event_id, json.loads("\n".join(data)))
                event_id, data = "", []


async def collect(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event of one POST /inference/generate, through its done or error event."""
    return [event async for _, (_, event) in stream_events(client, "POST", "/inference/generate", json=body)]


def token_events(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if "token" in e]
