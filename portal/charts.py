"""Earnings per day as a server-rendered SVG bar chart: no JavaScript, readable with scripts off.

Bars stack paid, in payment and unpaid $FAR for each day; heights are computed in Decimal and rounded to
whole pixels, so no money ever passes through a float.
"""

from decimal import ROUND_HALF_UP, Decimal
from html import escape
from typing import Any

from protocol.money import plain_text

WIDTH, HEIGHT, MARGIN = 640, 200, 30
PARTS = (
    ("paid_far", "#2e7d32", "paid"),
    ("in_payment_far", "#f9a825", "in payment"),
    ("unpaid_far", "#90a4ae", "unpaid"),
)


def _px(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def earnings_svg(by_day: list[dict[str, Any]]) -> str:
    """An <svg> of `by_day` rows (day, paid_far, in_payment_far, unpaid_far as decimal strings)."""
    days = by_day[-60:]
    totals = [sum((Decimal(d[name]) for name, _, _ in PARTS), Decimal(0)) for d in days]
    top = max(totals, default=Decimal(0))
    inner_h = HEIGHT - 2 * MARGIN
    slot = Decimal(WIDTH - 2 * MARGIN) / max(len(days), 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="earnings per day" class="chart">',
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" y2="{HEIGHT - MARGIN}" stroke="#555"/>',
        f'<text x="{MARGIN}" y="{MARGIN - 10}" font-size="11">max {escape(plain_text(top))} FAR/day</text>',
    ]
    for index, day in enumerate(days):
        x = _px(MARGIN + slot * index + slot / 10)
        width = max(_px(slot * 8 / 10), 1)
        base = Decimal(HEIGHT - MARGIN)
        for name, colour, label in PARTS:
            amount = Decimal(day[name])
            if amount <= 0 or top <= 0:
                continue
            height = amount / top * inner_h
            base -= height
            out.append(
                f'<rect x="{x}" y="{_px(base)}" width="{width}" height="{max(_px(height), 1)}" fill="{colour}">'
                f"<title>{escape(day['day'])} {label}: {escape(day[name])} FAR</title></rect>"
            )
        if len(days) <= 14 or index % max(len(days) // 7, 1) == 0:
            out.append(f'<text x="{x}" y="{HEIGHT - MARGIN + 14}" font-size="10">{escape(day["day"][5:])}</text>')
    legend_x = WIDTH - MARGIN - 240
    for offset, (_, colour, label) in enumerate(PARTS):
        out.append(f'<rect x="{legend_x + offset * 80}" y="6" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{legend_x + offset * 80 + 14}" y="15" font-size="11">{label}</text>')
    out.append("</svg>")
    return "".join(out)
