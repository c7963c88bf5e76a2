"""A streamed body goes to the `send` the first app middleware was given; the start goes through every layer."""

from starlette.types import Message, Receive, Scope, Send

from gateway.direct_send import DirectSendMiddleware, direct_send


async def test_a_body_sent_directly_skips_the_middleware_inside_and_an_app_without_it_sends_as_usual() -> None:
    outer: list[Message] = []
    inner: list[Message] = []

    async def server_send(message: Message) -> None:
        outer.append(message)

    async def response(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await direct_send(scope, send)({"type": "http.response.body", "body": b"token", "more_body": False})

    async def watching_middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def watched(message: Message) -> None:
            inner.append(message)
            await send(message)

        await response(scope, receive, watched)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    await DirectSendMiddleware(watching_middleware)({"type": "http"}, receive, server_send)
    assert [m["type"] for m in inner] == ["http.response.start"]
    assert [m["type"] for m in outer] == ["http.response.start", "http.response.body"]

    inner.clear()
    outer.clear()
    await watching_middleware({"type": "http"}, receive, server_send)  # no DirectSendMiddleware: through the chain
    assert [m["type"] for m in inner] == ["http.response.start", "http.response.body"]
    assert len(outer) == 2
