"""Whole numbers written by another party (a query parameter, a header, a signed message): read strictly.

`str.isdigit` is true for characters `int` refuses ("²") and for more digits than `int` will convert, so a check
made with it still lets malformed text reach `int` and fail as an unexpected error instead of a clear refusal.
"""

MAX_DIGITS = 19
"""Enough for any BIGINT; more is never a number these inputs need."""


def whole_number(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """`text` as an int when it is 1 to `max_digits` ASCII digits, else None."""
    if 1 <= len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
