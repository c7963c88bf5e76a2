"""The Python SDK's prepaid balance (#26 part 6): `balance()` reads `GET /v1/usage`'s `balance`, and a 402
`insufficient_balance` (either error shape) is `InsufficientBalance`, over a fake transport."""

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from farlabs import AsyncFarMesh, Balance, FarMesh, InsufficientBalance
from farlabs.errors import APIError

USAGE: dict[str, Any] = {
    "object": "usage",
    "wallet": "0x" + "ab" * 20,
    "total_cost_far": "0.5",
    "data": [],
    "budget": {"api_key_id": "k1"},
    "balance": {"balance_far": "9.5", "held_far": "0.25", "available_far": "9.25", "required": True},
}
NATIVE_402 = {
    "error": {
        "code": "insufficient_balance",
        "message": "this request may cost up to 0.3 FAR, but the prepaid balance has 0.1 FAR available",
        "field": "max_tokens",
        "details": [{"balance_far": "0.1", "max_cost_far": "0.3"}],
    }
}
OPENAI_402 = {
    "error": {
        "message": "no balance",
        "type": "insufficient_balance",
        "param": "max_tokens",
        "code": "insufficient_balance",
    }
}


def transport(status: int, body: dict[str, Any], seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    return httpx.MockTransport(answer)


def test_balance_reads_the_usage_balance_as_decimals() -> None:
    seen: list[httpx.Request] = []
    with FarMesh(
        api_key="fm_test", base_url="http://gw", http_client=httpx.Client(transport=transport(200, USAGE, seen))
    ) as mesh:
        balance = mesh.balance()
    assert balance == Balance(Decimal("9.5"), Decimal("0.25"), Decimal("9.25"), True)
    assert seen[0].method == "GET" and seen[0].url.path == "/v1/usage"


def test_no_balance_in_the_usage_is_none() -> None:
    body = {k: v for k, v in USAGE.items() if k != "balance"}
    with FarMesh(
        api_key="fm_test", base_url="http://gw", http_client=httpx.Client(transport=transport(200, body, []))
    ) as mesh:
        assert mesh.balance() is None


async def test_the_async_client_reads_the_balance_too() -> None:
    client = httpx.AsyncClient(transport=transport(200, USAGE, []))
    async with AsyncFarMesh(api_key="fm_test", base_url="http://gw", http_client=client) as mesh:
        balance = await mesh.balance()
    assert balance is not None and balance.available_far == Decimal("9.25") and balance.required


@pytest.mark.parametrize(
    ("body", "available", "max_cost"), [(NATIVE_402, Decimal("0.1"), Decimal("0.3")), (OPENAI_402, None, None)]
)
def test_a_402_insufficient_balance_is_raised_typed_with_its_figures(
    body: dict[str, Any], available: Decimal | None, max_cost: Decimal | None
) -> None:
    seen: list[httpx.Request] = []
    with (
        FarMesh(
            api_key="fm_test", base_url="http://gw", http_client=httpx.Client(transport=transport(402, body, seen))
        ) as mesh,
        pytest.raises(InsufficientBalance) as raised,
    ):
        mesh.chat("hello", max_tokens=1000)
    error = raised.value
    assert isinstance(error, APIError) and (error.status, error.code, error.field) == (
        402,
        "insufficient_balance",
        "max_tokens",
    )
    assert (error.available_far, error.max_cost_far) == (available, max_cost)
    assert len(seen) == 1  # a refusal is not retried
