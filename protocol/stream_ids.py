"""Redis Stream entry ids ("1700000000000-3": unix ms, then a sequence number), parsed and compared in one place.

The gateway's relay compares them with its clients' cursors, `Last-Event-ID` is one (each SSE event's id is its
entry's), and accounting trims the usage stream below one; all of them parse ids here, so "which entry comes
first" has one answer.
"""

from typing import Final

EntryId = tuple[int, int]
"""A parsed entry id, (ms, seq): tuples compare in stream order."""

BEFORE_FIRST: Final = "0-0"
"""The id before every entry: reading after it reads a stream from its start."""

_MAX_PART: Final = 2**64 - 1


def parse_entry_id(entry_id: str | bytes) -> EntryId:
    """An entry id as a comparable pair; `ValueError` when Redis would refuse it ("5" alone means "5-0").

    Strict on purpose: one id Redis refuses in a relay reader's XREAD would fail that call for every client it
    serves.
    """
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    if not (ms.isascii() and ms.isdigit() and seq.isascii() and (seq.isdigit() or seq == "")) or len(ms) > 20:
        raise ValueError(f"not a stream entry id: {text!r}")
    parsed = int(ms), int(seq or 0)
    if max(parsed) > _MAX_PART:
        raise ValueError(f"stream entry id out of range: {text!r}")
    return parsed


def format_entry_id(parsed: EntryId) -> str:
    """The id Redis takes for `parsed` (the inverse of `parse_entry_id`)."""
    return f"{parsed[0]}-{parsed[1]}"
