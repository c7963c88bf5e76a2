"""Stream entry ids parse into pairs that sort as Redis orders its entries, from text or bytes alike."""

import pytest

from protocol.stream_ids import BEFORE_FIRST, format_entry_id, parse_entry_id


def test_ids_compare_in_stream_order_not_as_text() -> None:
    ids = ["1700000000000-10", "1700000000000-9", "999-0", BEFORE_FIRST]
    assert sorted(ids, key=parse_entry_id) == [BEFORE_FIRST, "999-0", "1700000000000-9", "1700000000000-10"]


def test_an_id_as_redis_returns_it_in_bytes_parses_like_its_text() -> None:
    assert parse_entry_id(b"1700000000000-3") == parse_entry_id("1700000000000-3") == (1700000000000, 3)


def test_a_bare_millisecond_id_means_its_first_sequence_number() -> None:
    assert parse_entry_id("5") == parse_entry_id("5-") == parse_entry_id("5-0") == (5, 0)


@pytest.mark.parametrize("text", ["0-0", "1700000000000-3", "18446744073709551615-18446744073709551615"])
def test_formatting_a_parsed_id_gives_the_id_back(text: str) -> None:
    assert format_entry_id(parse_entry_id(text)) == text
