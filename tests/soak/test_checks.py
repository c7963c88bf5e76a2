"""The soak's checkers fail on what they exist to catch (a checker that cannot fail proves nothing), on rows made
by hand; and the buyers read a failed generation's 502 as the request's own ending (it counted as hung before)."""

from decimal import Decimal
from typing import Any

import httpx

from devstack.harness.soak import checks
from devstack.harness.soak.buyers import Request, _generation_failed
from devstack.harness.soak.checks import Session
from protocol.money import split_with_fee

PRICE = Decimal("0.0003")


def session(request_id: str, tokens: int, work: dict[str, int], *, pay: dict[str, Decimal] | None = None) -> Session:
    cost = tokens * PRICE
    payments, fee, remainder = split_with_fee(cost, work, 0)
    row: dict[str, Any] = {
        "request_id": request_id,
        "tokens_generated": tokens,
        "prompt_tokens": 5,
        "price_per_token_far": PRICE,
        "prompt_price_per_token_far": Decimal(0),
        "total_cost_far": cost,
        "platform_fee_bps": 0,
        "platform_fee_far": fee,
        "platform_remainder_far": remainder,
        "api_key_id": "k",
    }
    paid = pay or payments
    contributions = [{"node_id": n, "work_units": w, "payment_far": paid[n]} for n, w in work.items()]
    return Session(row, contributions)


def finished(request_id: str, delivered: int, ending: str = "done:completed") -> Request:
    request = Request(request_id, "sse", 40, 0.0, ending=ending, delivered=delivered, reported=None, accepted=True)
    request.tokens = {i: i for i in range(delivered)}
    return request


def test_billing_past_the_in_flight_bound_or_below_what_was_delivered_fails() -> None:
    ledger = {"a": [session("a", 10, {"n": 1})], "b": [session("b", 14, {"n": 1})], "c": [session("c", 9, {"n": 1})]}
    result = checks.delivered_within_billed([finished("a", 10), finished("b", 10), finished("c", 10)], ledger)
    assert not result.passed
    assert [o.split(" ")[0] for o in result.offenders] == ["b", "c"]
    assert checks.delivered_within_billed([finished("a", 8, "error:stream_lost")], ledger).passed  # within 3


def test_a_request_that_ran_without_a_session_or_a_session_nobody_ran_fails() -> None:
    ledger = {"a": [session("a", 10, {"n": 1})], "x": [session("x", 1, {"n": 1})]}
    result = checks.sessions_equal_requests_that_ran([finished("a", 10), finished("b", 3)], ledger)
    assert not result.passed and result.offenders == ["ran, no session: b", "session, never ran: x"]


def test_a_request_billed_twice_fails() -> None:
    assert not checks.no_request_billed_twice({"a": [session("a", 1, {"n": 1}), session("a", 1, {"n": 1})]}).passed


def test_a_payment_off_by_one_unit_of_the_last_decimal_fails() -> None:
    exact = session("a", 7, {"n1": 2, "n2": 1})
    assert checks.earnings_exact({"a": [exact]}).passed
    paid = {c["node_id"]: c["payment_far"] for c in exact.contributions}
    paid["n1"] += Decimal("1e-18")
    assert not checks.earnings_exact({"a": [session("a", 7, {"n1": 2, "n2": 1}, pay=paid)]}).passed


def test_payments_weighed_by_block_premiums_are_checked_on_the_work_they_were_paid_on() -> None:
    """Paid on premium-weighted work (schema/0026), a session's shares are not its work units' at par."""
    weighed = {"n1": 2 * 15_000, "n2": 1 * 10_000}  # n1's blocks at a 1.5x premium
    payments, fee, remainder = split_with_fee(7 * PRICE, weighed, 0)
    premium = session("a", 7, {"n1": 2, "n2": 1}, pay=payments)
    premium.row["platform_remainder_far"] = remainder
    for contribution in premium.contributions:
        contribution["paid_work_units"] = weighed[contribution["node_id"]]
    assert checks.earnings_exact({"a": [premium]}).passed
    for contribution in premium.contributions:
        contribution["paid_work_units"] = None  # the same payments, checked at par: they are not its shares
    assert not checks.earnings_exact({"a": [premium]}).passed


def test_a_hung_request_or_a_gap_in_a_stream_fails() -> None:
    hung = Request("h", "openai", 8, 0.0, ending="hung")
    assert not checks.every_request_ended([finished("a", 2), hung]).passed
    gap = finished("g", 3)
    del gap.tokens[1]
    assert not checks.tokens_delivered_once_in_order([gap]).passed


def test_a_502_naming_the_generation_failure_is_the_requests_ending_and_any_other_is_retried() -> None:
    failed = httpx.Response(502, json={"error": {"message": "generation failed (no_route): no route", "code": None}})
    assert _generation_failed(failed) == "no_route"
    assert _generation_failed(httpx.Response(502, text="<html>bad gateway</html>")) is None
    assert _generation_failed(httpx.Response(503, json={"error": {"message": "generation failed (x): y"}})) is None
