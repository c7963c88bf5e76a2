"""An API key's words and format, the one definition the gateway (which verifies keys and whose CLI issues them)
and the portal (which issues and revokes them for a signed-in wallet) share.

A key reads `fmk_<key_id>_<secret>`: `key_id` (16 hex digits) is public and finds its row in `far_api_keys`;
the secret is 256 random bits, shown once. How it is stored (only the secret's SHA-256) is the ledger's:
schema/api_keys.py.
"""

import re
import secrets

KEY_PREFIX = "fmk"
MAX_LABEL_CHARS = 200
"""A key's label, at most (both issuers refuse a longer one)."""

_KEY = re.compile(rf"^{KEY_PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})$")


def new_key() -> tuple[str, str]:
    """A fresh (key_id, secret)."""
    return secrets.token_hex(8), secrets.token_urlsafe(32)


def format_key(key_id: str, secret: str) -> str:
    """The key as its holder presents it."""
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def parse_key(presented: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    match = _KEY.fullmatch(presented)
    return (match.group(1), match.group(2)) if match else None
