"""/openapi.json describes the real routes, and fuzzing every operation it lists finds no 5xx."""

import json
import string
from typing import Any
from urllib.parse import quote

import httpx
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.settings import GatewaySettings
from protocol import keys
from protocol.requests import SamplingOptions
from tests.fixtures.gateway import MODEL_ID, OTHER_MODEL_ID, WALLET, issue_key_sync, snapshot

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
GOOD = {
    "prompt": st.sampled_from(["hello", "x" * 999, ""]),
    "max_tokens": st.integers(-1, 100),
    "temperature": st.floats(-1, 3),
    "top_p": st.floats(-0.5, 1.5),
    "user_wallet": st.sampled_from([WALLET, WALLET.lower(), "0x0"]),
    "request_id": st.text(string.ascii_letters + "_:.-/ ", min_size=0, max_size=70),
    "model_id": st.sampled_from([MODEL_ID, OTHER_MODEL_ID, "nobody/sells", "../x"]),
    "model": st.sampled_from([MODEL_ID, OTHER_MODEL_ID, "nobody/sells"]),
    "messages": st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "robot"]), "content": JSON}), max_size=3
    ),
    "stream": st.booleans(),
    "stop": st.none() | st.text(max_size=3),
    "n": st.integers(0, 3),
}
HEADER_TEXT = st.text(string.ascii_letters + string.digits + "-_ :.", max_size=40).map(str.strip)


def body_strategy(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    properties = schema.get("properties", {})
    fields = st.fixed_dictionaries({}, optional={name: GOOD.get(name, JSON) | JSON for name in properties})
    return st.one_of(fields, fields, JSON)


async def test_the_document_lists_every_route_and_method_the_app_serves(
    gateway_url: str, gateway_env: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    app = create_app(GatewaySettings.from_env(**{k.lower(): v for k, v in gateway_env.items()}))
    served = {(route.path, method.lower()) for route in app.routes for method in route.methods - {"HEAD"}}  # type: ignore[attr-defined]
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == served
    generate = document["paths"]["/inference/generate"]["post"]
    assert {"401", "403", "404", "409", "413", "422", "429", "503"} <= set(generate["responses"])
    schema = document["components"]["schemas"]["GenerateRequest"]
    assert set(schema["properties"]) == {
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "user_wallet",
        "request_id",
        "model_id",
        *SamplingOptions.model_fields,
    }


def test_fuzzing_every_documented_operation_finds_no_server_error(
    gateway_url: str, redis_url: str, migrated_postgres_dsn: str
) -> None:
    sync_redis = redis.Redis.from_url(redis_url)
    for model_id in (MODEL_ID, OTHER_MODEL_ID):
        sync_redis.hset(keys.SWARM_SNAPSHOTS, model_id, snapshot(model_id).model_dump_json())
    sync_redis.close()
    key = issue_key_sync(migrated_postgres_dsn)
    document = httpx.get(f"{gateway_url}/openapi.json").json()
    components = document["components"]["schemas"]
    operations = [
        (method.upper(), path, spec) for path, item in document["paths"].items() for method, spec in item.items()
    ]

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None]:
        method, path, spec = draw(st.sampled_from(operations))
        if "{request_id}" in path:
            path = path.replace("{request_id}", quote(draw(st.text(min_size=1, max_size=70)), safe=""))
        headers = {"Authorization": draw(st.sampled_from([f"Bearer {key}", "Bearer nope", ""]) | HEADER_TEXT)}
        headers["Last-Event-ID"] = draw(st.sampled_from(["0-0", "1-1", "99999999999999999999999-1"]) | HEADER_TEXT)
        content = None
        if "requestBody" in spec:
            schema = spec["requestBody"]["content"]["application/json"]["schema"]
            payload = draw(body_strategy(schema, components))
            content = json.dumps(payload).encode() if draw(st.integers(0, 9)) else draw(st.binary(max_size=50))
            headers["content-type"] = "application/json"
        return method, path, headers, content

    with httpx.Client(base_url=gateway_url, timeout=10) as client:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(requests())
        def no_server_error(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
            method, path, headers, content = request
            with client.stream(method, path, headers=headers, content=content) as response:
                assert response.status_code < 500 or response.status_code == 503, (request, response.read())
                if response.headers.get("content-type", "").startswith("application/json"):
                    body = json.loads(response.read())
                    if response.status_code >= 400:
                        assert body["error"]["code"] and body["error"]["message"]

        no_server_error()
