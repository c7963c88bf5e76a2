"""How a client is configured: where the gateway is, which key to send, how long to wait, how often to retry.

`FarMesh(api_key=...)` alone must work (the seed's snippet), so the base URL falls back to the
`FARLABS_BASE_URL` environment variable and then to the gateway's local default; the key may come from
`FARLABS_API_KEY`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx

from farlabs.errors import FarMeshError

DEFAULT_BASE_URL = "http://localhost:8100"
BASE_URL_ENV = "FARLABS_BASE_URL"
API_KEY_ENV = "FARLABS_API_KEY"
USER_AGENT = "farlabs-python/0.1.0"

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=30.0)
"""The read timeout bounds the silence between two reads of a stream; the gateway sends a keep-alive comment at
least every 15 s (GATEWAY_HEARTBEAT_INTERVAL_S), so a longer silence means the connection is dead: resume."""


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts are retried: connection errors, dropped streams, and 502/503/504 answers.

    `max_retries` counts consecutive failed attempts; every event received resets the count, so a long stream
    survives any number of separate drops. The first retry is immediate (the gateway cancels a request whose
    client stays away longer than its grace period, 5 s by default); the next ones back off exponentially from
    `backoff_s` to `max_backoff_s`, or wait what the gateway's Retry-After asks, whichever is longer.
    A 429 on submitting a request is raised as `RateLimited` with its `retry_after`; a 429 on resuming one
    (it already runs, and bills) is waited out for as long as Retry-After asks, then retried.
    """

    max_retries: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the attempt that follows `failures` consecutive failures (1 = the first)."""
        wait = 0.0 if failures <= 1 else min(self.max_backoff_s, self.backoff_s * 2 ** (failures - 2))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff_s))
        return wait


@dataclass(frozen=True)
class ClientOptions:
    api_key: str
    base_url: str
    timeout: httpx.Timeout
    retry: RetryPolicy

    @classmethod
    def resolve(
        cls,
        api_key: str | None,
        base_url: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int | None,
        retry: RetryPolicy | None = None,
    ) -> ClientOptions:
        key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV) or "").strip()  # a file's newline
        if not key:
            raise FarMeshError(f"no API key: pass FarMesh(api_key=...) or set {API_KEY_ENV}")
        if not (key.isascii() and key.isprintable()) or " " in key:
            # never sent: a header cannot carry it, and the error httpx raises would quote it
            raise FarMeshError("the API key holds spaces or characters a header cannot carry; pass it as it was issued")
        url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise FarMeshError(f"base_url must start with http:// or https://, got {url!r}")
        if timeout is None:
            resolved_timeout = DEFAULT_TIMEOUT
        elif isinstance(timeout, httpx.Timeout):
            resolved_timeout = timeout
        else:
            resolved_timeout = httpx.Timeout(timeout)
        policy = retry or RetryPolicy()
        if max_retries is not None:
            policy = RetryPolicy(max(0, max_retries), policy.backoff_s, policy.max_backoff_s)
        return cls(key, url, resolved_timeout, policy)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": USER_AGENT}
