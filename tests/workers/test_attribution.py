from decimal import Decimal

from mesh.session import ServedSpan
from protocol.money import FAR_QUANTUM
from workers.attribution import Attribution

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"


def wallet_of(public_name: str | None) -> str | None:
    return WALLET if public_name == "paid" else None


def test_work_is_blocks_times_tokens_per_step_and_prefill_counts_the_prompt() -> None:
    attribution = Attribution()
    route = [ServedSpan("A", 0, 2, "paid"), ServedSpan("B", 2, 5)]
    attribution.record_step(route, tokens=7)  # prefill
    for _ in range(3):
        attribution.record_step(route, tokens=1)
    contributions, _ = attribution.apportion(Decimal("0.0004"), wallet_of)
    by_node = {c.node_id: c for c in contributions}
    assert (by_node["A"].work_units, by_node["B"].work_units) == (2 * 10, 3 * 10)
    assert (by_node["A"].tokens_contributed, by_node["A"].blocks_served) == (10, 2)
    assert by_node["A"].wallet == WALLET and by_node["B"].wallet is None
    assert attribution.total_work_units == 5 * 10


def test_a_route_change_credits_each_step_to_the_spans_that_served_it() -> None:
    attribution = Attribution()
    attribution.record_step([ServedSpan("A", 0, 4)], tokens=5)
    attribution.record_step([ServedSpan("A", 0, 2), ServedSpan("C", 2, 4)], tokens=1)
    contributions, _ = attribution.apportion(Decimal(0), wallet_of)
    by_node = {c.node_id: c for c in contributions}
    assert by_node["A"].work_units == 4 * 5 + 2 and by_node["C"].work_units == 2
    assert by_node["A"].blocks_served == 4 and by_node["C"].tokens_contributed == 1


def test_payments_plus_remainder_equal_the_cost_exactly() -> None:
    attribution = Attribution()
    attribution.record_step([ServedSpan("A", 0, 1), ServedSpan("B", 1, 2), ServedSpan("C", 2, 3)], tokens=1)
    cost = Decimal("0.000000000000000010")
    contributions, remainder = attribution.apportion(cost, wallet_of)
    assert sum(c.payment_far for c in contributions) + remainder == cost
    assert all(c.payment_far == 3 * FAR_QUANTUM for c in contributions) and remainder == FAR_QUANTUM
