"""Whole numbers another party wrote are read strictly: ASCII digits, bounded in length, or nothing."""

import pytest

from protocol.numerals import MAX_DIGITS, whole_number


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("42", 42), ("9" * MAX_DIGITS, int("9" * MAX_DIGITS))])
def test_ascii_digits_are_read(text: str, value: int) -> None:
    assert whole_number(text) == value


@pytest.mark.parametrize("text", ["", "-1", "+1", " 1", "1\n", "1.0", "\u00b2", "\u0663", "9" * (MAX_DIGITS + 1)])
def test_anything_else_is_none_rather_than_an_error(text: str) -> None:
    assert whole_number(text) is None


def test_a_caller_may_allow_fewer_digits() -> None:
    assert whole_number("1234", max_digits=3) is None
