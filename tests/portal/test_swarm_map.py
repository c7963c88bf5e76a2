"""portal/swarm_map.py: where a new node helps most, and the SVG earnings chart of portal/charts.py."""

from portal.charts import earnings_svg
from portal.swarm_map import under_served


def test_the_longest_run_of_the_least_served_blocks_is_suggested() -> None:
    assert under_served([2, 1, 1, 2, 1, 1, 1, 2]).__dict__ == {"start_block": 4, "end_block": 7, "coverage": 1}
    assert under_served([0, 0, 0]).__dict__ == {"start_block": 0, "end_block": 3, "coverage": 0}
    assert under_served([1, 0, 1, 0]).__dict__ == {"start_block": 1, "end_block": 2, "coverage": 0}


def test_the_chart_stacks_paid_in_payment_and_unpaid_per_day() -> None:
    svg = earnings_svg(
        [
            {"day": "2026-12-01", "paid_far": "1.5", "in_payment_far": "0", "unpaid_far": "0.5"},
            {"day": "2026-12-02", "paid_far": "0", "in_payment_far": "0.25", "unpaid_far": "0.000000000000000001"},
        ]
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<rect") == 4 + 3  # four non-zero parts, three legend swatches
    assert "2026-12-01 paid: 1.5 FAR" in svg


def test_an_empty_chart_is_still_an_svg() -> None:
    assert earnings_svg([]).startswith("<svg")
