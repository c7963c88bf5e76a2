"""Sending a long response's body past the middleware that only watch its start.

Each relayed token is one ASGI `http.response.body` message, and each middleware inside the app's first wraps
`send` to see the response's start and passes every later message on unchanged: our request metrics,
Starlette's exception middleware and its route wrapper. At 3,000 streams those pass-through coroutines took
about a tenth of the gateway's CPU (bench/bench_gateway_relay.py under py-spy, docs/performance.md).
`DirectSendMiddleware`, the first of the app's own middleware, keeps the `send` it was given in the scope; a
streaming response sends its start through the whole chain, as every middleware expects, and its body with
`direct_send(scope, send)`.

So a middleware that changes bodies (compression, say) must come before it, never after.
"""

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "far_mesh.direct_send"


class DirectSendMiddleware:
    """Keeps the `send` this middleware was given in the scope, for `direct_send`; the outermost one wins (the
    served app is wrapped in one around Starlette's own error middleware, which also only watches the start)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault(SCOPE_KEY, send)
        await self.app(scope, receive, send)


def direct_send(scope: Scope, send: Send) -> Send:
    """The `send` for a response's body messages, once its start went through `send`: the one given to
    `DirectSendMiddleware`, or `send` itself in an app without it."""
    direct: Send = scope.get(SCOPE_KEY, send)
    return direct
