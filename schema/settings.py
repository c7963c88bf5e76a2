"""Where the ledger lives: POSTGRES_URL, shared by `far-mesh migrate`, the accounting consumer and payouts."""

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from protocol.settings import CommonSettings


def _validate_postgres_url(url: str) -> str:
    """Refuse a DSN the driver would misread, saying why without any part of it: a password holding an unescaped
    `/`, `?`, `#` or `@` ends the host part early, and asyncpg's own error then quotes pieces of the password."""
    # pydantic's PostgresDsn rejects the empty host of unix-socket DSNs (postgresql://u@/db?host=/run/pg).
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("invalid DSN: expected postgresql://user[:password]@host[:port]/database")
    unescaped = "invalid DSN: percent-encode / ? # @ : in the user name and password (%2F %3F %23 %40 %3A)"
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError(unescaped) from None
    if "@" in parts.path + parts.query + parts.fragment:
        raise ValueError(unescaped)
    if not (parts.hostname or "host=" in parts.query):
        raise ValueError("invalid DSN: no host (give host[:port], or ?host=/socket/dir)")
    return url


PostgresUrl = Annotated[str, AfterValidator(_validate_postgres_url)]


class LedgerSettings(CommonSettings):
    postgres_url: PostgresUrl = Field(description="PostgreSQL connection URL of the ledger (required)")
