"""Sign-In with Ethereum (EIP-4361) messages: written by the portal, signed by the wallet, checked on return.

The portal gives the browser the exact message to sign (its domain, the address, a fresh server nonce, the
chain id and a short validity); the browser's wallet signs it with `personal_sign`; the portal parses the text
it gets back and accepts it only if every field is what this portal would have written: its own domain, URI and
chain id, a nonce it issued and nobody used (consumed here, so a replay fails), times that have not passed.
The URI is checked as strictly as the domain: a message naming another resource (a phishing page's copy of the
portal, another origin of the same host) was not written for this portal, whatever its domain line says.
The parser reads the ABNF's line layout strictly; anything else is refused, never guessed at.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from protocol.numerals import whole_number
from protocol.wallet import InvalidWallet, validate_wallet

STATEMENT = "Sign in to the Far Mesh portal to manage your nodes and API keys."
CLOCK_SKEW = timedelta(seconds=60)
_NONCE = re.compile(r"^[A-Za-z0-9]{8,64}$")
_HEADER = re.compile(r"^(?P<domain>[^\s/]+) wants you to sign in with your Ethereum account:$")


class InvalidSiweMessage(ValueError):
    """The message is not an EIP-4361 message this portal would accept; the text says which field is wrong."""


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    statement: str | None
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: datetime
    expiration_time: datetime | None = None
    not_before: datetime | None = None

    def text(self) -> str:
        """The message exactly as EIP-4361 lays it out (what the wallet shows and signs)."""
        lines = [f"{self.domain} wants you to sign in with your Ethereum account:", self.address, ""]
        if self.statement is not None:
            lines += [self.statement, ""]
        else:
            lines += [""]
        lines += [
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {_iso(self.issued_at)}",
        ]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {_iso(self.expiration_time)}")
        if self.not_before is not None:
            lines.append(f"Not Before: {_iso(self.not_before)}")
        return "\n".join(lines)


def portal_uri(domain: str, *, secure: bool) -> str:
    """The URI the portal's messages name and must come back naming: its own origin (https when its cookies are
    Secure, so behind TLS; http otherwise), root path."""
    return f"{'https' if secure else 'http'}://{domain}/"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(name: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSiweMessage(f"{name} is not an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        raise InvalidSiweMessage(f"{name} has no time zone: {text!r}")
    return moment


def parse(text: str) -> SiweMessage:
    """Read an EIP-4361 message; `InvalidSiweMessage` names the first line that does not fit."""
    lines = text.split("\n")
    if len(lines) < 8:
        raise InvalidSiweMessage("too short to be a Sign-In with Ethereum message")
    header = _HEADER.match(lines[0])
    if header is None:
        raise InvalidSiweMessage("the first line must be '<domain> wants you to sign in with your Ethereum account:'")
    try:
        address = validate_wallet(lines[1])
    except InvalidWallet as exc:
        raise InvalidSiweMessage(f"address: {exc}") from None
    if lines[2] != "":
        raise InvalidSiweMessage("an empty line must follow the address")
    if lines[3] == "":
        statement, rest = None, lines[4:]
    else:
        if lines[4] != "":
            raise InvalidSiweMessage("an empty line must follow the statement")
        statement, rest = lines[3], lines[5:]
    fields: dict[str, str] = {}
    order = ["URI", "Version", "Chain ID", "Nonce", "Issued At", "Expiration Time", "Not Before"]
    position = 0
    for line in rest:
        name, sep, value = line.partition(": ")
        if not sep or name not in order[position:]:
            raise InvalidSiweMessage(f"unexpected line {line!r} (fields go in the order {', '.join(order)})")
        position = order.index(name) + 1
        fields[name] = value
    for required in order[:5]:
        if required not in fields:
            raise InvalidSiweMessage(f"the {required} field is missing")
    if fields["Version"] != "1":
        raise InvalidSiweMessage(f"Version must be 1, not {fields['Version']!r}")
    if whole_number(fields["Chain ID"]) is None:
        raise InvalidSiweMessage(f"Chain ID must be a number, not {fields['Chain ID']!r}")
    if not _NONCE.fullmatch(fields["Nonce"]):
        raise InvalidSiweMessage("Nonce must be 8 to 64 letters and digits")
    return SiweMessage(
        domain=header.group("domain"),
        address=address,
        statement=statement,
        uri=fields["URI"],
        version="1",
        chain_id=int(fields["Chain ID"]),
        nonce=fields["Nonce"],
        issued_at=_parse_time("Issued At", fields["Issued At"]),
        expiration_time=_parse_time("Expiration Time", fields["Expiration Time"])
        if "Expiration Time" in fields
        else None,
        not_before=_parse_time("Not Before", fields["Not Before"]) if "Not Before" in fields else None,
    )


def check_fields(
    message: SiweMessage, *, domain: str, uri: str, chain_id: int, now: datetime, max_age: timedelta
) -> None:
    """Everything but the nonce and the signature: the message is for this portal, this chain, and current."""
    if message.domain != domain:
        raise InvalidSiweMessage(f"the message is for domain {message.domain!r}, this portal is {domain!r}")
    if message.uri != uri:
        raise InvalidSiweMessage(f"the message's URI is {message.uri!r}, this portal is {uri!r}")
    if message.chain_id != chain_id:
        raise InvalidSiweMessage(f"the message is for chain id {message.chain_id}, this portal uses {chain_id}")
    if message.issued_at > now + CLOCK_SKEW:
        raise InvalidSiweMessage("Issued At is in the future")
    if message.issued_at < now - max_age:
        raise InvalidSiweMessage("the message is too old; ask for a new one")
    if message.expiration_time is not None and message.expiration_time <= now:
        raise InvalidSiweMessage("the message has expired")
    if message.not_before is not None and message.not_before > now + CLOCK_SKEW:
        raise InvalidSiweMessage("the message is not valid yet (Not Before)")
