"""The OpenAPI 3.1 document of the gateway, served at /openapi.json.

Request bodies come from the same pydantic models that validate them, so the document cannot drift from what
the routes accept; responses and errors are written out here, next to each other, to be checked by the tests.
"""

from typing import Any

from pydantic import BaseModel

from gateway.batch_openapi import batch_paths
from gateway.openai_api import ChatCompletionRequest, CompletionRequest
from gateway.settings import GatewaySettings
from protocol.events import DoneEvent, ErrorEvent, TokenEvent
from protocol.requests import MAX_CHOICES, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, REQUEST_ID_PATTERN, GenerateRequest
from protocol.version import VERSION

_REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict[str, Any], mode: str = "validation") -> dict[str, str]:
    schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code"},
                "message": {"type": "string", "description": "What is wrong and what to do"},
                "field": {"type": ["string", "null"], "description": "The offending field, when one is"},
                "details": {
                    "type": "array",
                    "description": "422 only: pydantic's errors",
                    "items": {
                        "type": "object",
                        "properties": {"loc": {"type": "array"}, "msg": {"type": "string"}, "type": {"type": "string"}},
                    },
                },
            },
        }
    },
}

_FAR = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]{1,18})?$",
    "description": "An amount of $FAR, as a decimal string",
}
_PRICES = {
    "prompt_price_per_token_far": {**_FAR, "description": "Price per prompt token, fixed for a request at admission"},
    "completion_price_per_token_far": {
        **_FAR,
        "description": "Price per generated token, fixed for a request at admission",
    },
    "price_per_token_far": {
        **_FAR,
        "description": "The completion price, under the name clients read before prompts had a price",
    },
    "price_multiplier": {
        "type": "string",
        "pattern": r"^[0-9]+(\.[0-9]{1,4})?$",
        "description": "The current prices over the catalogue's: they follow queue depth and swarm coverage within "
        "configured bounds (docs/pricing.md); 1 while the pricer is off",
    },
}
"""What every route quoting a model says of its prices. A request costs its prompt tokens (once a token was
generated) at the prompt price plus its generated tokens at the completion price."""
_DESCRIPTION = {
    "family": {"type": ["string", "null"], "description": "What the model is; tiny generated ones say random weights"},
    "parameters": {"type": ["integer", "null"], "minimum": 0, "description": "Number of weights"},
    "context_length": {
        "type": ["integer", "null"],
        "minimum": 1,
        "description": "Most tokens of prompt and completion",
    },
    "license": {"type": ["string", "null"], "description": "License of the weights"},
}
"""What the model lists say a model is (null where its catalogue entry does not say)."""
_MODELS_SCHEMA = {
    "type": "object",
    "required": ["models"],
    "properties": {
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["model_id", "status", *_PRICES, *_DESCRIPTION],
                "properties": {
                    "model_id": {"type": "string"},
                    "active_nodes": {"type": ["integer", "null"]},
                    "status": {"type": "string", "enum": ["available", "unavailable"]},
                    **_PRICES,
                    **_DESCRIPTION,
                    "nodes": {"type": "array", "items": {"type": "object"}},
                    "price_history": {
                        "type": "array",
                        "description": "The latest steps of the model's prices, oldest first; each holds from its "
                        "priced_at until the next (docs/pricing.md). Empty while the pricer is off",
                        "items": {
                            "type": "object",
                            "required": ["priced_at", *_PRICES],
                            "properties": {"priced_at": {"type": "string", "format": "date-time"}, **_PRICES},
                        },
                    },
                },
            },
        }
    },
}
_OPENAI_MODELS_SCHEMA = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "object", *_PRICES, *_DESCRIPTION],
                "properties": {"id": {"type": "string"}, "object": {"const": "model"}, **_PRICES, **_DESCRIPTION},
            },
        },
    },
}
_MESH_STATUS_SCHEMA = {
    "type": "object",
    "required": ["model_id", "status", *_PRICES],
    "properties": {"model_id": {"type": "string"}, "status": {"type": "string"}, **_PRICES},
}

_OPENAI_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string", "description": "What is wrong and what to do"},
                "type": {
                    "type": "string",
                    "enum": [
                        "invalid_request_error",
                        "authentication_error",
                        "insufficient_quota",
                        "permission_error",
                        "rate_limit_error",
                        "server_error",
                    ],
                },
                "param": {"type": ["string", "null"], "description": "The offending parameter, when one is"},
                "code": {"type": "string", "description": "Stable machine-readable code, e.g. unsupported_parameter"},
            },
        }
    },
}


def _openai_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="OpenAIError")}}},
    }


_PAYMENT_DETAIL = {
    "type": "object",
    "description": "insufficient_balance: what the wallet's prepaid balance has available and what the request may "
    "cost at most; budget_exceeded: what remains of the key's budget, which limit, and the most it may cost",
    "properties": {
        "balance_far": {**_FAR, "description": "The prepaid balance available (deposits - charges - open holds)"},
        "remaining_far": {**_FAR, "description": "What remains of the API key's budget"},
        "limit": {"type": "string", "description": "Which of the key's budgets was short"},
        "max_cost_far": {**_FAR, "description": "Prompt tokens x prompt price + max_tokens x completion price"},
    },
    "required": ["max_cost_far"],
}
_PAYMENT_REQUIRED_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field", "details"],
            "properties": {
                "code": {"type": "string", "enum": ["insufficient_balance", "budget_exceeded"]},
                "message": {"type": "string", "description": "The balance (or budget) and the most it may cost"},
                "field": {"type": ["string", "null"], "description": "max_tokens: lowering it lowers the cost"},
                "details": {"type": "array", "items": _PAYMENT_DETAIL, "minItems": 1, "maxItems": 1},
            },
        }
    },
}
_PAYMENT_REQUIRED = (
    "`insufficient_balance`: the request's maximum cost (its prompt tokens at the prompt price plus n × max_tokens at "
    "the completion price) is more than the wallet's prepaid balance has available (GATEWAY_REQUIRE_PREPAID_BALANCE; "
    "deposit $FAR or lower max_tokens); or `budget_exceeded`: more than remains of the API key's budget"
)
_AUTH_ERRORS = {"401": _error("Missing, invalid or revoked API key")}
_SUBMIT_ERRORS = {
    **_AUTH_ERRORS,
    "402": {
        "description": _PAYMENT_REQUIRED + "; `details` names the balance and the price",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="PaymentRequiredError")}}},
    },
    "403": _error("user_wallet is not the API key's wallet"),
    "404": _error("Unknown model"),
    "409": _error(
        "request_id already used by another API key, or `max_price_exceeded`: a price quoted now is above "
        "provider.max_price (`field` names which); nothing was queued"
    ),
    "413": _error("Request body too large"),
    "415": _error("Body is not JSON"),
    "422": _error("Invalid field; details name each one"),
    "429": _error("Rate limit or concurrent-stream limit reached; see Retry-After"),
    "503": _error("Redis unavailable, or no healthy swarm serves the model; see Retry-After"),
}
_OPENAI_ERRORS = {
    "400": _openai_error(
        "Invalid, unknown or unsupported parameter; `param` names it. Or, without streaming, "
        "`context_length_exceeded`: the prompt holds more tokens than the model's context, which only a worker "
        "can count (a stream reports it as an error chunk with code `prompt_too_long`). Or `unsupported_schema`: a "
        "`response_format` schema or a tool's `parameters` the grammar engine cannot enforce (with `strict`, a "
        "keyword it does not implement; the message names it and where it is)"
    ),
    "401": _openai_error("Missing, invalid or revoked API key"),
    "402": _openai_error(
        _PAYMENT_REQUIRED + " (type `insufficient_quota`, `param` max_tokens; the message names the balance and the "
        "most the request may cost)"
    ),
    "403": _openai_error("user_wallet is not the API key's wallet"),
    "404": _openai_error("Unknown model, or (chat) a named tool_choice that is not among the tools"),
    "409": _openai_error(
        "request_id already used by another API key, or `max_price_exceeded`: a price quoted now is above "
        "provider.max_price (`param` names which); nothing was queued. Or, without streaming, "
        "`route_unsatisfiable`: no server the provider preferences allow holds some blocks (the message names them; "
        "a stream reports it as an error chunk with that code)"
    ),
    "413": _openai_error("Request body too large"),
    "415": _openai_error("Body is not JSON"),
    "429": _openai_error("Rate limit or concurrent-stream limit reached; see Retry-After"),
    "502": _openai_error("The worker failed the request"),
    "503": _error("Redis unavailable, or no healthy swarm serves the model; see Retry-After"),
    "504": _openai_error("Without streaming: still running after GATEWAY_STREAM_DEADLINE_S; cancelled"),
}
_SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event: `data` is one JSON event (TokenEvent, DoneEvent or ErrorEvent on the "
    "native routes; an OpenAI chunk or `[DONE]` on /v1); `id` is the stream entry id to resume after",
    "required": ["data"],
    "properties": {
        "data": {"type": "string", "contentMediaType": "application/json"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
_SSE = {"text/event-stream": {"schema": {"type": "array", "items": _SSE_EVENT}, "itemSchema": _SSE_EVENT}}
_REQUEST_ID_PARAM = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}


_BOUND_KEYWORDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


def _apply_caps(node: Any, *, max_tokens: int, max_prompt_chars: int) -> None:
    """The gateway's configured caps in place of the hard ceilings every process agrees on, so the document
    declares what this gateway accepts (a schema-valid request is never refused for a cap it did not state)."""
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):  # pydantic leaves its own names inside a nullable union
            for pydantic_name, keyword in _BOUND_KEYWORDS.items():
                if pydantic_name in node:
                    node[keyword] = node.pop(pydantic_name)
        if node.get("maximum") == MAX_NEW_TOKENS:
            node["maximum"] = min(MAX_NEW_TOKENS, max_tokens)
        if node.get("maxLength") == MAX_PROMPT_CHARS:
            node["maxLength"] = min(MAX_PROMPT_CHARS, max_prompt_chars)
        for value in node.values():
            _apply_caps(value, max_tokens=max_tokens, max_prompt_chars=max_prompt_chars)
    elif isinstance(node, list):
        for value in node:
            _apply_caps(value, max_tokens=max_tokens, max_prompt_chars=max_prompt_chars)


def _cap_choices(node: Any, most: int) -> None:
    """GATEWAY_MAX_CHOICES as the n field's maximum, in place of the ceiling every process agrees on."""
    if isinstance(node, dict):
        if node.get("maximum") == MAX_CHOICES:
            node["maximum"] = min(MAX_CHOICES, most)
        for value in node.get("anyOf", []):
            _cap_choices(value, most)


def _name_models(node: Any, model_ids: list[str]) -> None:
    """The models this gateway sells as the model field's enum: any other is refused (404), so the document says
    so, and a schema-valid request names a model that can run."""
    if isinstance(node, dict):
        if node.get("type") == "string":
            node["enum"] = list(model_ids)
        for value in node.get("anyOf", []):
            _name_models(value, model_ids)


def build_openapi(settings: GatewaySettings) -> dict[str, Any]:
    components: dict[str, Any] = {
        "Error": _ERROR_SCHEMA,
        "OpenAIError": _OPENAI_ERROR_SCHEMA,
        "PaymentRequiredError": _PAYMENT_REQUIRED_SCHEMA,
    }
    generate = _schema(GenerateRequest, components)
    chat = _schema(ChatCompletionRequest, components)
    completion = _schema(CompletionRequest, components)
    # the request bodies and every schema they refer to (a chat message, its content parts)
    _apply_caps(components, max_tokens=settings.gateway_max_tokens, max_prompt_chars=settings.gateway_max_prompt_chars)
    for name, field in (
        ("GenerateRequest", "model_id"),
        ("ChatCompletionRequest", "model"),
        ("CompletionRequest", "model"),
    ):
        _name_models(components[name]["properties"][field], settings.catalog.model_ids)
        _cap_choices(components[name]["properties"]["n"], settings.gateway_max_choices)
    for event in (TokenEvent, DoneEvent, ErrorEvent):
        _schema(event, components, mode="serialization")
    bearer: list[dict[str, list[str]]] = [{"apiKey": []}]

    def json_ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}

    def body(ref: dict[str, str]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": ref}}}

    stream_ok = {
        "description": "Server-Sent Events: one `data:` TokenEvent per token (its `id:` is the stream entry id), "
        "then one DoneEvent or ErrorEvent (its `error.code` is a StreamErrorCode); `: keep-alive` comments while idle",
        "content": _SSE,
    }
    # A size in bytes is one thing JSON Schema cannot state: the limit is in this description and in the 413's.
    too_large = f"Request body over {settings.gateway_max_body_bytes} bytes (GATEWAY_MAX_BODY_BYTES)"
    submit_errors = {**_SUBMIT_ERRORS, "413": _error(too_large)}
    openai_errors = {**_OPENAI_ERRORS, "413": _openai_error(too_large)}
    openai_ok = {
        "description": "A completion (JSON), or with stream=true Server-Sent Events ending in `data: [DONE]`",
        "content": {"application/json": {"schema": {"type": "object"}}, **_SSE},
    }
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Health check",
                "responses": {"200": json_ok("Healthy"), "503": json_ok("Redis does not answer")},
            }
        },
        "/mesh/status": {
            "get": {
                "summary": "Swarm status of a model (default DEFAULT_MODEL_ID)",
                "parameters": [{"name": "model_id", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {
                    "200": json_ok(
                        "Status; 'disconnected' with null counts when no fresh snapshot", _MESH_STATUS_SCHEMA
                    ),
                    "404": _error("Unknown model"),
                },
            }
        },
        "/models": {
            "get": {
                "summary": "Models on sale, what each is, their prompt and completion prices, and their availability",
                "responses": {"200": json_ok("Models", _MODELS_SCHEMA)},
            }
        },
        "/inference/generate": {
            "post": {
                "summary": "Generate, streaming tokens as Server-Sent Events",
                "security": bearer,
                "requestBody": body(generate),
                "responses": {"200": stream_ok, **submit_errors},
            }
        },
        "/inference/{request_id}/stream": {
            "get": {
                "summary": "Re-attach to a request's stream; with Last-Event-ID, resume right after that event",
                "security": bearer,
                "parameters": [
                    _REQUEST_ID_PARAM,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": r"^[ \t]*([0-9]{1,19}(-[0-9]{0,19})?)?[ \t]*$"},
                    },
                ],
                "responses": {
                    "200": stream_ok,
                    **_AUTH_ERRORS,
                    "403": _error("Another API key's request"),
                    "404": _error("Unknown request"),
                    "422": _error("Bad request id or Last-Event-ID"),
                    "429": _error("Concurrent-stream limit reached"),
                },
            }
        },
        "/inference/{request_id}/cancel": {
            "post": {
                "summary": "Cancel a request; its stream ends with a cancelled DoneEvent",
                "security": bearer,
                "parameters": [_REQUEST_ID_PARAM],
                "responses": {
                    "202": json_ok("Cancellation requested"),
                    "200": json_ok("Already finished"),
                    **_AUTH_ERRORS,
                    "403": _error("Another API key's request"),
                    "404": _error("Unknown request"),
                    "422": _error("Bad request id"),
                },
            }
        },
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI-compatible chat completion",
                "security": bearer,
                "requestBody": body(chat),
                "responses": {"200": openai_ok, **openai_errors},
            }
        },
        "/v1/completions": {
            "post": {
                "summary": "OpenAI-compatible completion",
                "security": bearer,
                "requestBody": body(completion),
                "responses": {"200": openai_ok, **openai_errors},
            }
        },
        "/v1/models": {
            "get": {
                "summary": "OpenAI-compatible model list, with what each model is and its prompt and completion prices",
                "responses": {"200": json_ok("Models", _OPENAI_MODELS_SCHEMA)},
            }
        },
        "/v1/usage": {
            "get": {
                "summary": "Spend of every key of the caller's wallet by UTC day, model and key (from the ledger), "
                "and the calling key's budget",
                "security": bearer,
                "parameters": [
                    {"name": "start", "in": "query", "required": False, "schema": {"type": "string", "format": "date"}},
                    {"name": "end", "in": "query", "required": False, "schema": {"type": "string", "format": "date"}},
                ],
                "responses": {
                    "200": json_ok("Usage"),
                    "400": _openai_error("Bad dates"),
                    "401": _openai_error("Missing, invalid, revoked or expired API key"),
                    "503": _error("The ledger or Redis does not answer; see Retry-After"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": json_ok("OpenAPI 3.1")}}},
        **batch_paths(settings, components, _openai_error, bearer),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Far Mesh Coordinator gateway",
            "version": VERSION,
            "description": f"Request bodies up to {settings.gateway_max_body_bytes} bytes (413 above); a prompt, and "
            f"each text of a chat message, up to {settings.gateway_max_prompt_chars} characters; max_tokens up to "
            f"{settings.gateway_max_tokens}; n up to {settings.gateway_max_choices} choices. A chat's messages "
            "together are bounded by the body size and by the "
            "model's context in tokens, which only a worker can count: `prompt_too_long` on a stream, 400 "
            "`context_length_exceeded` on a non-streaming /v1 call.",
        },
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
    }
