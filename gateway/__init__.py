"""The gateway: a thin Starlette app that authenticates and validates generation requests, enqueues them as
arq jobs, and relays each job's Redis token stream to the client as Server-Sent Events (and OpenAI-style).

Kept light on purpose: importing this package loads no app; `gateway.app.create_app` builds one and
`far-mesh gateway` serves it. Modules: `settings`, `app`, `inference` and `openai_api` (routes), `submission`,
`relay` and `sse` (the stream relay), `api_keys` and `auth`, `rate_limit` and `inflight` (limits), `metrics`,
`openapi`, `errors`.
"""

__all__: list[str] = []
