"""`FarMesh` and `AsyncFarMesh`: the gateway's public API as methods.

    from farlabs import FarMesh
    mesh = FarMesh(api_key="...")
    response = mesh.chat("Explain quantum computing")
    for token in response:
        print(token, end="")

`chat()` sends the request at once (so a refused request raises there) and returns the stream of tokens.
The native route is the default because its events carry the running cost and resume exactly;
`api="openai"` sends the same generation through `/v1/chat/completions` instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from farlabs.catalog import Balance, MeshStatus, Model
from farlabs.errors import APIConnectionError, APIError, error_from_response
from farlabs.options import ClientOptions, RetryPolicy
from farlabs.prompts import Message, native_body, new_request_id, openai_body
from farlabs.provider import ProviderPreferences
from farlabs.stream import AsyncTokenStream, Submission, TokenStream, retryable

Api = Literal["native", "openai"]


class _Attempts:
    """Retries of one idempotent call (GET, cancel): transport errors and 502/503/504, per the policy."""

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self.failures = 0

    def after(self, error: BaseException, retry_after: float | None = None) -> float:
        self.failures += 1
        if self.failures > self.retry.max_retries:
            if isinstance(error, APIError):
                raise error
            raise APIConnectionError(f"gateway unreachable after retries: {type(error).__name__}: {error}") from error
        return self.retry.delay(self.failures, retry_after)


def _checked(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise error_from_response(response.status_code, response.headers, response.content)
    return response.json()


def _balance(usage: Any) -> Balance | None:
    body = usage.get("balance") if isinstance(usage, dict) else None
    return Balance.from_json(body) if isinstance(body, dict) else None


def _submission(
    api: Api,
    prompt: str | Sequence[Message],
    *,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    request_id: str | None,
    response_format: Mapping[str, Any] | None = None,
    provider: ProviderPreferences | None = None,
) -> Submission:
    if isinstance(prompt, str) and not prompt:
        raise ValueError("prompt must not be empty")
    request_id = request_id or new_request_id()
    if api == "openai":
        if model is None:
            raise ValueError('api="openai" needs model=...; FarMesh.models() lists them')
        body = openai_body(
            prompt,
            request_id=request_id,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            response_format=response_format,
            provider=provider,
        )
        return Submission("/v1/chat/completions", body, request_id)
    body = native_body(
        prompt,
        request_id=request_id,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        response_format=response_format,
        provider=provider,
    )
    return Submission("/inference/generate", body, request_id)


class FarMesh:
    """A client of one Far Mesh gateway.

    `api_key` defaults to $FARLABS_API_KEY; `base_url` to $FARLABS_BASE_URL, then http://localhost:8100.
    `timeout` (seconds, or an `httpx.Timeout`) bounds each connect and each silence between reads;
    `max_retries` (or a whole `RetryPolicy`) bounds consecutive failed attempts of one call.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.options = ClientOptions.resolve(api_key, base_url, timeout, max_retries, retry)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()
        self._http.base_url = httpx.URL(self.options.base_url)
        self._http.headers.update(self.options.headers)
        self._http.timeout = self.options.timeout

    @property
    def base_url(self) -> str:
        return self.options.base_url

    def chat(
        self,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        request_id: str | None = None,
        api: Api = "native",
        response_format: Mapping[str, Any] | None = None,
        provider: ProviderPreferences | None = None,
    ) -> TokenStream:
        """Start a generation from a prompt or chat messages; iterate the result for its tokens.

        `request_id` is the idempotency key (one is generated when omitted): sending a request id again,
        even from another process, re-attaches to that generation instead of running and billing it twice.
        Options left None take the gateway's defaults. `response_format` ({"type": "json_object"}, or
        {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}) makes the tokens one JSON value,
        enforced by the worker (the gateway's docs/structured-outputs.md). `provider` is the buyer's routing
        preferences (`ProviderPreferences`: max_price, sort, only, ignore, allow_fallbacks, min_reputation; the
        gateway's docs/routing.md), sent as given: a quote above `max_price` raises `MaxPriceExceeded` here, and
        a request no allowed route can serve ends its stream with `RouteUnsatisfiable`.
        """
        submission = _submission(
            api,
            prompt,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            request_id=request_id,
            response_format=response_format,
            provider=provider,
        )
        return TokenStream(self._http, self.options, submission)

    def resume(self, request_id: str) -> TokenStream:
        """Follow a generation started earlier (by this or another client) from its first token."""
        return TokenStream(self._http, self.options, Submission.resumed(request_id))

    def models(self) -> list[Model]:
        """Every model on sale, with its price and whether a healthy swarm serves it now."""
        return [Model.from_json(item) for item in self._get("/models")["models"]]

    def mesh_status(self, model: str | None = None) -> MeshStatus:
        """The swarm of `model` (the gateway's default model when None)."""
        return MeshStatus.from_json(self._get("/mesh/status", {"model_id": model} if model else None))

    def balance(self) -> Balance | None:
        """The key's wallet's prepaid balance (`GET /v1/usage`'s `balance`); None while the wallet has never
        deposited nor been charged (the gateway then reports none)."""
        return _balance(self._get("/v1/usage"))

    def cancel(self, request_id: str) -> str:
        """Stop a generation: "cancelling" (its stream ends with finish_reason "cancelled") or "finished"."""
        return str(self._call("POST", f"/inference/{request_id}/cancel")["status"])

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> FarMesh:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._call("GET", path, params)

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        attempts = _Attempts(self.options.retry)
        while True:
            try:
                return _checked(self._http.request(method, path, params=params))
            except httpx.TransportError as exc:
                time.sleep(attempts.after(exc))
            except APIError as exc:
                if not retryable(exc):
                    raise
                time.sleep(attempts.after(exc, getattr(exc, "retry_after", None)))


class AsyncFarMesh:
    """`FarMesh` for asyncio: `stream = await mesh.chat(...)`, then `async for token in stream`."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.options = ClientOptions.resolve(api_key, base_url, timeout, max_retries, retry)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient()
        self._http.base_url = httpx.URL(self.options.base_url)
        self._http.headers.update(self.options.headers)
        self._http.timeout = self.options.timeout

    @property
    def base_url(self) -> str:
        return self.options.base_url

    async def chat(
        self,
        prompt: str | Sequence[Message],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        request_id: str | None = None,
        api: Api = "native",
        response_format: Mapping[str, Any] | None = None,
        provider: ProviderPreferences | None = None,
    ) -> AsyncTokenStream:
        """`FarMesh.chat`: sends the request now, returns the stream to `async for` over."""
        submission = _submission(
            api,
            prompt,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            request_id=request_id,
            response_format=response_format,
            provider=provider,
        )
        return await AsyncTokenStream(self._http, self.options, submission).start()

    async def resume(self, request_id: str) -> AsyncTokenStream:
        """`FarMesh.resume`: follow a generation started earlier, from its first token."""
        return await AsyncTokenStream(self._http, self.options, Submission.resumed(request_id)).start()

    async def models(self) -> list[Model]:
        return [Model.from_json(item) for item in (await self._call("GET", "/models"))["models"]]

    async def mesh_status(self, model: str | None = None) -> MeshStatus:
        return MeshStatus.from_json(await self._call("GET", "/mesh/status", {"model_id": model} if model else None))

    async def balance(self) -> Balance | None:
        """`FarMesh.balance`: the key's wallet's prepaid balance, or None when the gateway reports none."""
        return _balance(await self._call("GET", "/v1/usage"))

    async def cancel(self, request_id: str) -> str:
        return str((await self._call("POST", f"/inference/{request_id}/cancel"))["status"])

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncFarMesh:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        attempts = _Attempts(self.options.retry)
        while True:
            try:
                return _checked(await self._http.request(method, path, params=params))
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after(exc))
            except APIError as exc:
                if not retryable(exc):
                    raise
                await asyncio.sleep(attempts.after(exc, getattr(exc, "retry_after", None)))
