"""portal/siwe.py reads EIP-4361 messages strictly and checks they were written for this portal, now."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from portal.siwe import STATEMENT, InvalidSiweMessage, SiweMessage, check_fields, parse

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
MESSAGE = SiweMessage(
    domain="portal.example:8200",
    address="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    statement=STATEMENT,
    uri="http://portal.example:8200/",
    version="1",
    chain_id=31337,
    nonce="0123456789abcdef",
    issued_at=NOW,
    expiration_time=NOW + timedelta(minutes=5),
)


def test_a_message_reads_back_as_written() -> None:
    assert parse(MESSAGE.text()) == MESSAGE
    assert MESSAGE.text().splitlines()[:2] == [
        "portal.example:8200 wants you to sign in with your Ethereum account:",
        MESSAGE.address,
    ]


def test_a_message_without_a_statement_reads_back() -> None:
    bare = SiweMessage(**{**MESSAGE.__dict__, "statement": None, "expiration_time": None})
    assert parse(bare.text()) == bare


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda t: t.replace(" wants you to sign in", " would like you to sign in"), "first line"),
        (
            lambda t: t.replace(
                "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
            ),
            "checksum",
        ),
        (lambda t: t.replace("Version: 1", "Version: 2"), "Version"),
        (lambda t: t.replace("Chain ID: 31337", "Chain ID: one"), "Chain ID"),
        (lambda t: t.replace("Nonce: 0123456789abcdef", "Nonce: short"), "Nonce"),
        (lambda t: t.replace("Issued At: 2026-12-02T12:00:00Z", "Issued At: yesterday"), "Issued At"),
        (lambda t: t + "\nResources: none", "unexpected line"),
        (lambda t: t.replace("URI: ", "Uri: "), "unexpected line"),
    ],
)
def test_malformed_messages_are_refused_naming_the_field(change: object, complaint: str) -> None:
    with pytest.raises(InvalidSiweMessage, match=complaint):
        parse(change(MESSAGE.text()))  # type: ignore[operator]


def test_fields_must_name_this_portal_and_be_current() -> None:
    fine: dict[str, Any] = {
        "domain": MESSAGE.domain,
        "uri": MESSAGE.uri,
        "chain_id": 31337,
        "now": NOW,
        "max_age": timedelta(minutes=5),
    }
    check_fields(MESSAGE, **fine)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"domain": "other.example"}, "domain"),
        ({"uri": "https://portal.example:8200/"}, "URI"),
        ({"chain_id": 1}, "chain id"),
        ({"now": NOW + timedelta(minutes=6)}, "too old"),
        ({"now": NOW + timedelta(minutes=5), "max_age": timedelta(hours=1)}, "expired"),
        ({"now": NOW - timedelta(minutes=5)}, "future"),
    ]
    for override, complaint in cases:
        with pytest.raises(InvalidSiweMessage, match=complaint):
            check_fields(MESSAGE, **{**fine, **override})
