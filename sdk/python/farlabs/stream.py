"""A generation as an iterator of text tokens that survives dropped connections (`TokenStream`, `AsyncTokenStream`).

The first attempt POSTs the request with a request id the client chose. Until the gateway has accepted it, a
failed attempt POSTs the same body again: the gateway re-attaches a known request id, so nothing runs or bills
twice. Once accepted, a dropped connection resumes with `GET /inference/{request_id}/stream` and
`Last-Event-ID`, so the next event is the one after the last one read: no token is lost or repeated. The
attempts follow the client's `RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any

import httpx

from farlabs.errors import APIConnectionError, APIError, RateLimited, error_from_response
from farlabs.options import ClientOptions
from farlabs.progress import Progress, Usage
from farlabs.sse import SSEDecoder

_NOT_RETRIED = frozenset({"no_healthy_swarm", "generation_failed", "stream_deadline"})


@dataclass(frozen=True)
class Submission:
    """The request that starts a generation: the native POST, or an OpenAI-compatible streaming one."""

    path: str
    body: dict[str, Any]
    request_id: str
    accepted: bool = False
    """True for a generation the gateway already runs: the stream is followed, never submitted."""

    @classmethod
    def resumed(cls, request_id: str) -> Submission:
        return cls("", {}, request_id, accepted=True)


def retryable(error: APIError) -> bool:
    """A gateway or proxy hiccup worth another attempt; everything else is the caller's to handle."""
    return error.status in (502, 503, 504) and error.code not in _NOT_RETRIED


def _failure(error: BaseException) -> APIConnectionError:
    return APIConnectionError(f"gateway unreachable after retries: {type(error).__name__}: {error}")


class _StreamBase:
    """What both streams expose while they run and once they end."""

    def __init__(self, options: ClientOptions, submission: Submission) -> None:
        self._options = options
        self._submission = submission
        self._progress = Progress(submission.request_id)
        self._accepted = submission.accepted
        self._maybe_accepted = False
        """A POST went out and no answer came back: the gateway may be running (and billing) the generation."""
        self._failures = 0

    @property
    def request_id(self) -> str:
        return self._progress.request_id

    @property
    def cost_far(self) -> Decimal:
        """Running cost of the tokens yielded so far; the billed total once the stream has ended."""
        return self._progress.cost_far

    @property
    def tokens_generated(self) -> int:
        return self._progress.tokens_generated

    @property
    def usage(self) -> Usage | None:
        """The billed totals, once the final event has arrived (None before)."""
        return self._progress.usage

    @property
    def finish_reason(self) -> str | None:
        """stop, length or cancelled once the stream has ended (error if it failed); None before."""
        return self._progress.finish_reason

    @property
    def finished(self) -> bool:
        return self._progress.finished

    @property
    def last_event_id(self) -> str | None:
        return self._progress.last_event_id

    def _next_request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        if not self._accepted:
            return http.build_request("POST", self._submission.path, json=self._submission.body)
        headers = {"Accept": "text/event-stream"}
        if self._progress.last_event_id:
            headers["Last-Event-ID"] = self._progress.last_event_id
        return http.build_request("GET", f"/inference/{self.request_id}/stream", headers=headers)

    def _failed(self, error: BaseException, retry_after: float | None = None) -> float:
        """Count a failed attempt: the seconds to wait before the next one, or raise when none is left."""
        if isinstance(error, httpx.TransportError) and not self._accepted:
            self._maybe_accepted = True
        self._failures += 1
        if self._failures > self._options.retry.max_retries:
            if isinstance(error, APIError):
                raise error
            raise _failure(error) from error
        return self._options.retry.delay(self._failures, retry_after)

    def _refused(self, response: httpx.Response, body: bytes) -> float:
        error = error_from_response(response.status_code, response.headers, body, request_id=self.request_id)
        if isinstance(error, RateLimited) and (self._accepted or self._maybe_accepted):
            # resuming a running, billed generation (or reposting one whose first POST may have landed: the gateway
            # takes the rate limit before it re-attaches): wait as long as it asks rather than abandon it
            return max(self._failed(error), error.retry_after or 0.0)
        if not retryable(error):
            raise error
        return self._failed(error, getattr(error, "retry_after", None))

    def _opened(self, response: httpx.Response) -> bool:
        """Whether `response` is the stream to read: 200, or 204 (the gateway's "nothing after your last event")."""
        if response.status_code == 204:
            self._progress.finished = True  # everything up to the final event was already read
        elif response.status_code != 200:
            return False
        self._accepted = True
        return True


class TokenStream(_StreamBase):
    """The tokens of one generation, as they are generated; `for token in stream` yields each exactly once.

    While it runs: `request_id`, `cost_far` (running), `tokens_generated`; once it has ended: `usage` and
    `finish_reason`. `cancel()` stops the generation (the stream then ends with finish_reason "cancelled");
    `close()` just hangs up (the gateway cancels a request whose client does not come back within its grace).
    """

    def __init__(self, http: httpx.Client, options: ClientOptions, submission: Submission) -> None:
        super().__init__(options, submission)
        self._http = http
        self._response = self._open()
        self._tokens = self._generate()

    def __iter__(self) -> Iterator[str]:
        return self._tokens  # the generator itself: a for loop pays no extra call per token

    def __next__(self) -> str:
        return next(self._tokens)

    def text(self) -> str:
        """Every remaining token, joined: the whole reply when called before iterating."""
        return "".join(self)

    def cancel(self) -> str:
        """Ask the gateway to stop this generation; "cancelling", or "finished" when it had already ended."""
        response = self._http.post(f"/inference/{self.request_id}/cancel")
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.headers, response.content)
        return str(response.json()["status"])

    def close(self) -> None:
        self._tokens.close()
        self._response.close()

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> httpx.Response:
        while True:
            try:
                response = self._http.send(self._next_request(self._http), stream=True)
            except httpx.TransportError as exc:
                time.sleep(self._failed(exc))
                continue
            if self._opened(response):
                return response
            try:
                body = response.read()
            except httpx.TransportError:
                body = b""
            finally:
                response.close()
            time.sleep(self._refused(response, body))

    def _generate(self) -> Generator[str, None, None]:
        progress = self._progress
        while True:
            decoder = SSEDecoder()
            try:
                for chunk in self._response.iter_bytes():
                    events = decoder.feed(chunk)
                    if not events:
                        continue
                    self._failures = 0
                    for event_id, data in events:
                        token = progress.accept(event_id, data)
                        if token is not None:
                            yield token
                        elif progress.finished:
                            return
                if progress.finished:  # a 204: there was nothing left to read
                    return
                failure: BaseException = httpx.RemoteProtocolError("the stream ended before its final event")
            except httpx.TransportError as exc:
                failure = exc
            finally:
                self._response.close()
            time.sleep(self._failed(failure))
            self._response = self._open()


class AsyncTokenStream(_StreamBase):
    """`TokenStream` for asyncio: `async for token in stream`; `await stream.cancel()`, `await stream.aclose()`."""

    def __init__(self, http: httpx.AsyncClient, options: ClientOptions, submission: Submission) -> None:
        super().__init__(options, submission)
        self._http = http
        self._response: httpx.Response | None = None
        self._tokens = self._generate()

    async def start(self) -> AsyncTokenStream:
        """Send the request: raises the typed error now (401, 422, 429...) rather than at the first token."""
        if self._response is None:
            self._response = await self._open()
        return self

    def __aiter__(self) -> AsyncIterator[str]:
        return self._tokens

    async def __anext__(self) -> str:
        return await self._tokens.__anext__()

    async def text(self) -> str:
        return "".join([token async for token in self])

    async def cancel(self) -> str:
        response = await self._http.post(f"/inference/{self.request_id}/cancel")
        if response.status_code >= 400:
            raise error_from_response(response.status_code, response.headers, response.content)
        return str(response.json()["status"])

    async def aclose(self) -> None:
        await self._tokens.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncTokenStream:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _open(self) -> httpx.Response:
        while True:
            try:
                response = await self._http.send(self._next_request(self._http), stream=True)
            except httpx.TransportError as exc:
                await asyncio.sleep(self._failed(exc))
                continue
            if self._opened(response):
                return response
            try:
                body = await response.aread()
            except httpx.TransportError:
                body = b""
            finally:
                await response.aclose()
            await asyncio.sleep(self._refused(response, body))

    async def _generate(self) -> AsyncGenerator[str, None]:
        progress = self._progress
        await self.start()
        response = self._response
        while response is not None:
            decoder = SSEDecoder()
            try:
                async for chunk in response.aiter_bytes():
                    events = decoder.feed(chunk)
                    if not events:
                        continue
                    self._failures = 0
                    for event_id, data in events:
                        token = progress.accept(event_id, data)
                        if token is not None:
                            yield token
                        elif progress.finished:
                            return
                if progress.finished:  # a 204: there was nothing left to read
                    return
                failure: BaseException = httpx.RemoteProtocolError("the stream ended before its final event")
            except httpx.TransportError as exc:
                failure = exc
            finally:
                await response.aclose()
            await asyncio.sleep(self._failed(failure))
            self._response = response = await self._open()
