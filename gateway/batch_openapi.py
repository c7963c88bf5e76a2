"""The Batch API's part of the OpenAPI document (`gateway.openapi` merges it): `/v1/files` and `/v1/batches`.

The create body comes from the model that validates it (`gateway.batch_api.BatchCreate`); the file and batch
objects are OpenAI's, written out here with the fields every answer carries.
"""

from typing import Any

from gateway.batch_api import MAX_LIST, BatchCreate
from gateway.settings import GatewaySettings

_REF = "#/components/schemas/{model}"
_ID = {"type": "string", "maxLength": 64}
_TIME = {"type": "integer"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_MAYBE_TIME = {"type": ["integer", "null"]}

FILE_OBJECT: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's file object",
    "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "file"},
        "bytes": {"type": "integer", "minimum": 0},
        "created_at": _TIME,
        "expires_at": _TIME,
        "filename": {"type": "string"},
        "purpose": {"enum": ["batch", "batch_output"]},
        "status": {"const": "processed"},
    },
}

BATCH_OBJECT: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's batch object, plus the discount and the prices its lines were admitted at",
    "required": ["id", "object", "endpoint", "input_file_id", "completion_window", "status", "request_counts"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "batch"},
        "endpoint": {"enum": ["/v1/chat/completions", "/v1/completions"]},
        "errors": {
            "type": ["object", "null"],
            "description": "A failed validation: each bad line (1-based) with its code, message and param",
        },
        "input_file_id": {"type": "string"},
        "completion_window": {"const": "24h"},
        "status": {
            "enum": [
                "validating",
                "failed",
                "in_progress",
                "finalizing",
                "completed",
                "expired",
                "cancelling",
                "cancelled",
            ]
        },
        "output_file_id": {"type": ["string", "null"]},
        "error_file_id": {"type": ["string", "null"]},
        "created_at": _TIME,
        "in_progress_at": _MAYBE_TIME,
        "expires_at": _TIME,
        "finalizing_at": _MAYBE_TIME,
        "completed_at": _MAYBE_TIME,
        "failed_at": _MAYBE_TIME,
        "expired_at": _MAYBE_TIME,
        "cancelling_at": _MAYBE_TIME,
        "cancelled_at": _MAYBE_TIME,
        "request_counts": {
            "type": "object",
            "required": ["total", "completed", "failed"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("total", "completed", "failed")},
        },
        "metadata": {"type": ["object", "null"]},
        "discount_bps": {"type": "integer", "description": "GATEWAY_BATCH_DISCOUNT_BPS when it was admitted"},
        "prices": {"type": "object", "description": "Per model: the discounted prices fixed on its lines' jobs"},
    },
}


def _list_of(item: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
    }


def batch_paths(
    settings: GatewaySettings,
    components: dict[str, Any],
    openai_error: Any,
    bearer: list[dict[str, list[str]]],
) -> dict[str, Any]:
    """The Batch API's paths; adds its schemas to `components`. `openai_error(description)` is a response."""
    components["BatchCreate"] = BatchCreate.model_json_schema(ref_template=_REF)
    components["FileObject"] = FILE_OBJECT
    components["BatchObject"] = BATCH_OBJECT
    file_ref = {"$ref": _REF.format(model="FileObject")}
    batch_ref = {"$ref": _REF.format(model="BatchObject")}

    def ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    auth = {"401": openai_error("Missing, invalid or revoked API key")}
    unknown_file = {"404": openai_error("No such file among this API key's (another key's files are not shown)")}
    unknown_batch = {"404": openai_error("No such batch among this API key's")}
    file_param = [{"name": "file_id", "in": "path", "required": True, "schema": _ID}]
    batch_param = [{"name": "batch_id", "in": "path", "required": True, "schema": _ID}]
    paging = [
        {"name": "limit", "in": "query", "required": False, "schema": {**_INT, "minimum": 1, "maximum": MAX_LIST}},
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    paging_error = {"400": openai_error("limit is not an integer from 1 to 100")}
    most = settings.gateway_batch_max_file_bytes
    return {
        "/v1/files": {
            "post": {
                "summary": "Upload a Batch API input file (JSONL, UTF-8; purpose batch)",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["file", "purpose"],
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "purpose": {"const": "batch"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": ok("The file", file_ref),
                    "400": openai_error("No file, or a purpose other than batch"),
                    **auth,
                    "413": openai_error(f"A file over {most} bytes (GATEWAY_BATCH_MAX_FILE_BYTES)"),
                    "415": openai_error("Not multipart/form-data"),
                    "429": openai_error(
                        "The key's rate limit (with Retry-After), or it keeps GATEWAY_BATCH_MAX_FILES input files "
                        "already (quota_exceeded: delete one)"
                    ),
                },
            },
            "get": {
                "summary": "This API key's files, newest first",
                "security": bearer,
                "parameters": [
                    {"name": "purpose", "in": "query", "required": False, "schema": {"type": "string"}},
                    *paging,
                ],
                "responses": {"200": ok("Files", _list_of(file_ref)), **paging_error, **auth},
            },
        },
        "/v1/files/{file_id}": {
            "get": {
                "summary": "A file's object",
                "security": bearer,
                "parameters": file_param,
                "responses": {"200": ok("The file", file_ref), **auth, **unknown_file},
            },
            "delete": {
                "summary": "Delete a file",
                "security": bearer,
                "parameters": file_param,
                "responses": {
                    "200": ok(
                        "Deleted",
                        {
                            "type": "object",
                            "required": ["id", "object", "deleted"],
                            "properties": {"id": _STR, "object": {"const": "file"}, "deleted": {"const": True}},
                        },
                    ),
                    **auth,
                    **unknown_file,
                },
            },
        },
        "/v1/files/{file_id}/content": {
            "get": {
                "summary": "A file's JSONL: an input, or a batch's output (one line per answered request, with its "
                "custom_id and the endpoint's response body) or errors",
                "security": bearer,
                "parameters": file_param,
                "responses": {
                    "200": {"description": "JSONL", "content": {"application/jsonl": {"schema": {"type": "string"}}}},
                    **auth,
                    **unknown_file,
                },
            }
        },
        "/v1/batches": {
            "post": {
                "summary": "Create a batch on an uploaded file; every line is checked now (one bad line fails it), "
                "and the lines run at the discounted price when the swarm has room",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": _REF.format(model="BatchCreate")}}},
                },
                "responses": {
                    "200": ok("The batch: in_progress, or failed with its errors", batch_ref),
                    "400": openai_error("Invalid body, or the file is not a batch input"),
                    **auth,
                    "403": openai_error("A key with a budget (not offered batches yet)"),
                    "404": openai_error("No such file among this API key's"),
                    "413": openai_error("Request body too large"),
                    "415": openai_error("Body is not JSON"),
                    "429": openai_error("The key's rate limit, with Retry-After"),
                },
            },
            "get": {
                "summary": "This API key's batches, newest first",
                "security": bearer,
                "parameters": paging,
                "responses": {"200": ok("Batches", _list_of(batch_ref)), **paging_error, **auth},
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "summary": "A batch's status and counts",
                "security": bearer,
                "parameters": batch_param,
                "responses": {"200": ok("The batch", batch_ref), **auth, **unknown_batch},
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "summary": "Cancel a batch: no line starts any more, running lines are cancelled (billed for what "
                "they delivered); cancelling, then cancelled with its output and error files",
                "security": bearer,
                "parameters": batch_param,
                "responses": {
                    "200": ok("The batch, cancelling", batch_ref),
                    **auth,
                    **unknown_batch,
                    "409": openai_error("The batch is no longer running"),
                },
            }
        },
    }
