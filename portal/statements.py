"""The statements a wallet signs to own a node: a registration (peer id -> wallet) and a transfer (owner consent).

Plain `Name: value` lines under a title, each naming the peer id and the wallets involved, plus this portal's
domain and chain id, a server nonce and the time: a signature made for one node, wallet, portal or moment
proves nothing about another. The portal writes them; wallets sign them with `personal_sign`.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from protocol.numerals import whole_number
from protocol.wallet import InvalidWallet, validate_wallet

Kind = Literal["register", "transfer"]
TITLES: dict[Kind, str] = {"register": "Far Mesh node registration", "transfer": "Far Mesh node transfer"}
_FIELDS: dict[Kind, tuple[str, ...]] = {
    "register": ("Node", "Wallet", "Domain", "Chain ID", "Nonce", "Issued At"),
    "transfer": ("Node", "From wallet", "To wallet", "Domain", "Chain ID", "Nonce", "Issued At"),
}
_WALLET_FIELDS = {"Wallet", "From wallet", "To wallet"}


class InvalidStatement(ValueError):
    """Not a statement this portal writes; the text says what is wrong."""


@dataclass(frozen=True)
class Statement:
    kind: Kind
    node_id: str
    wallet: str
    """Registration: the wallet the node is registered to. Transfer: the wallet it moves to."""
    from_wallet: str | None
    """Transfer only: the owner consenting, who must sign it."""
    domain: str
    chain_id: int
    nonce: str
    issued_at: datetime

    @property
    def signer(self) -> str:
        """Whose signature makes this statement count."""
        return self.from_wallet if self.kind == "transfer" and self.from_wallet else self.wallet

    def text(self) -> str:
        values = {
            "Node": self.node_id,
            "Wallet": self.wallet,
            "From wallet": self.from_wallet or "",
            "To wallet": self.wallet,
            "Domain": self.domain,
            "Chain ID": str(self.chain_id),
            "Nonce": self.nonce,
            "Issued At": self.issued_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        return "\n".join([TITLES[self.kind], *(f"{name}: {values[name]}" for name in _FIELDS[self.kind])])


def parse(text: str, kind: Kind) -> Statement:
    lines = text.split("\n")
    fields = _FIELDS[kind]
    if len(lines) != len(fields) + 1 or lines[0] != TITLES[kind]:
        raise InvalidStatement(f"expected a '{TITLES[kind]}' statement of {len(fields)} fields")
    values: dict[str, str] = {}
    for name, line in zip(fields, lines[1:], strict=True):
        prefix = f"{name}: "
        if not line.startswith(prefix):
            raise InvalidStatement(f"expected the line '{name}: ...', got {line!r}")
        values[name] = line[len(prefix) :]
        if name in _WALLET_FIELDS:
            try:
                validate_wallet(values[name])
            except InvalidWallet as exc:
                raise InvalidStatement(f"{name}: {exc}") from None
    if not 1 <= len(values["Node"]) <= 128 or any(c.isspace() for c in values["Node"]):
        raise InvalidStatement("Node must be a peer id (1 to 128 characters, no spaces)")
    if whole_number(values["Chain ID"]) is None:
        raise InvalidStatement("Chain ID must be a number")
    try:
        issued_at = datetime.fromisoformat(values["Issued At"].replace("Z", "+00:00"))
    except ValueError:
        raise InvalidStatement("Issued At is not an RFC 3339 time") from None
    if issued_at.tzinfo is None:
        raise InvalidStatement("Issued At has no time zone")
    return Statement(
        kind=kind,
        node_id=values["Node"],
        wallet=values["Wallet"] if kind == "register" else values["To wallet"],
        from_wallet=values.get("From wallet"),
        domain=values["Domain"],
        chain_id=int(values["Chain ID"]),
        nonce=values["Nonce"],
        issued_at=issued_at,
    )
