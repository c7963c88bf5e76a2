"""A streamed body goes to the `send` the outermost DirectSendMiddleware was given; the start goes through every
layer."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.direct_send import DirectSendMiddleware, direct_send


async def response(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await direct_send(scope, send)({"type": "http.response.body", "body": b"token", "more_body": False})


def watching(app: ASGIApp, seen: list[str]) -> ASGIApp:
    """A middleware that notes the type of every message sent through it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def watched(message: Message) -> None:
            seen.append(message["type"])
            await send(message)

        await app(scope, receive, watched)

    return middleware


async def served(app: ASGIApp) -> list[str]:
    sent: list[str] = []

    async def server_send(message: Message) -> None:
        sent.append(message["type"])

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    await app({"type": "http"}, receive, server_send)
    return sent


async def test_a_body_sent_directly_skips_the_middleware_inside_the_outermost_direct_send_middleware() -> None:
    outer: list[str] = []
    inner: list[str] = []
    app = DirectSendMiddleware(watching(DirectSendMiddleware(watching(response, inner)), outer))
    assert await served(app) == ["http.response.start", "http.response.body"]
    assert outer == inner == ["http.response.start"]


async def test_without_the_middleware_a_body_goes_through_every_layer() -> None:
    seen: list[str] = []
    assert await served(watching(response, seen)) == ["http.response.start", "http.response.body"]
    assert seen == ["http.response.start", "http.response.body"]
