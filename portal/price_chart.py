"""A model's recent prices as a server-rendered SVG step line: no JavaScript, readable with scripts off.

A price holds from one step until the next (docs/pricing.md), so the line is drawn in steps, and the last one
runs to the chart's right edge (now). The line follows the multiplier over the catalogue price, which is the
same curve for the prompt and the completion price; each step's title says both prices. Coordinates are
computed in Decimal and rounded to whole pixels, so no amount of money passes through a float.
"""

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from html import escape
from typing import Any

WIDTH, HEIGHT, MARGIN = 640, 160, 30


def _px(value: Decimal) -> int:
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price_svg(points: list[dict[str, Any]], now: datetime) -> str:
    """An <svg> of `points` (oldest first, as the swarm page's document lists them: priced_at an ISO time;
    price_multiplier, prompt and completion prices decimal strings), from the first step to `now`; empty when
    there is no step."""
    if not points:
        return ""
    times = [datetime.fromisoformat(p["priced_at"]) for p in points]
    start = times[0]
    span_s = Decimal(max((now - start).total_seconds(), 1))
    multipliers = [Decimal(p["price_multiplier"]) for p in points]
    low, high = min(*multipliers, Decimal(1)), max(*multipliers, Decimal(1))
    spread = max(high - low, Decimal("0.1"))
    inner_w, inner_h = Decimal(WIDTH - 2 * MARGIN), Decimal(HEIGHT - 2 * MARGIN)

    def x(at: datetime) -> int:
        return _px(MARGIN + inner_w * Decimal((at - start).total_seconds()) / span_s)

    def y(multiplier: Decimal) -> int:
        return _px(HEIGHT - MARGIN - inner_h * (multiplier - low) / spread)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="price over the catalogue price" class="chart">',
        f'<line x1="{MARGIN}" y1="{y(Decimal(1))}" x2="{WIDTH - MARGIN}" y2="{y(Decimal(1))}" stroke="#bbb" '
        'stroke-dasharray="4 3"/>',
        f'<text x="{WIDTH - MARGIN + 2}" y="{y(Decimal(1)) + 4}" font-size="10">×1</text>',
        f'<text x="{MARGIN}" y="{MARGIN - 10}" font-size="11">×{escape(str(high.normalize()))} highest · '
        f"×{escape(str(low.normalize()))} lowest</text>",
    ]
    ends = [*times[1:], now]
    for point, at, multiplier, end in zip(points, times, multipliers, ends, strict=True):
        title = (
            f"from {at.isoformat(timespec='seconds')}: ×{point['price_multiplier']}, "
            f"prompt {point['prompt_price_per_token_far']} FAR, completion {point['completion_price_per_token_far']} "
            "FAR per token"
        )
        out.append(
            f'<line x1="{x(at)}" y1="{y(multiplier)}" x2="{x(end)}" y2="{y(multiplier)}" '
            f'stroke="#1565c0" stroke-width="2"><title>{escape(title)}</title></line>'
        )
    for before, after, at in zip(multipliers, multipliers[1:], ends, strict=False):
        out.append(f'<line x1="{x(at)}" y1="{y(before)}" x2="{x(at)}" y2="{y(after)}" stroke="#1565c0"/>')
    out.append(f'<text x="{MARGIN}" y="{HEIGHT - MARGIN + 14}" font-size="10">{escape(start.strftime("%H:%M"))}</text>')
    out.append(f'<text x="{WIDTH - MARGIN - 24}" y="{HEIGHT - MARGIN + 14}" font-size="10">now</text>')
    out.append("</svg>")
    return "".join(out)
