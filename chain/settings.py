"""Where the chain is and who pays: CHAIN_* and PAYOUT_TREASURY_* (the payer's own knobs,
PAYOUT_*, are in payouts.settings).

The treasury's private key comes from a file (a mounted Kubernetes Secret) or from PAYOUT_TREASURY_KEY (a
secret injected into the environment of the payer only); it is read when the payer starts, held in a
`SecretStr` that never prints, and never logged.
"""

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr

from protocol.settings import CommonSettings
from protocol.wallet import Wallet


def _validate_rpc_url(url: str) -> str:
    """An http(s) URL with a host, or refused at start-up naming neither its path nor its query (a provider's URL
    carries its API key there): a wrong scheme was otherwise retried for ever as a node that does not answer."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host[:port][/path] (the JSON-RPC node's HTTP endpoint)")
    return url


class ChainSettings(CommonSettings):
    chain_rpc_url: Annotated[str, AfterValidator(_validate_rpc_url)] = Field(
        default="http://127.0.0.1:8545", description="JSON-RPC URL of the EVM node payouts are sent to"
    )
    chain_id: int = Field(
        default=31337, ge=1, description="Chain id the node must report; anything else stops the payer"
    )
    chain_token_address: Wallet | None = Field(default=None, description="Address of the $FAR ERC-20 contract")
    chain_batch_contract_address: Wallet | None = Field(
        default=None, description="Address of the FarBatchTransfer contract that pays many wallets in one transaction"
    )
    payout_treasury_key_file: Path | None = Field(
        default=None, description="File holding the treasury's private key (hex); the key is never logged"
    )
    payout_treasury_key: SecretStr | None = Field(
        default=None, description="The treasury's private key itself, when no key file is given (a secret)"
    )
    chain_rpc_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Timeout of one JSON-RPC call")

    def treasury_key(self) -> SecretStr:
        """The treasury key, from the file or the variable; SettingsError-worthy problems raise ValueError."""
        if self.payout_treasury_key_file is not None:
            try:
                text = self.payout_treasury_key_file.read_text(encoding="ascii").strip()
            except OSError as exc:
                raise ValueError(f"PAYOUT_TREASURY_KEY_FILE: cannot read it ({exc.strerror})") from None
            return SecretStr(text)
        if self.payout_treasury_key is not None:
            return self.payout_treasury_key
        raise ValueError("PAYOUT_TREASURY_KEY_FILE or PAYOUT_TREASURY_KEY: the chain payer needs the treasury key")


class DepositChainSettings(ChainSettings):
    """Where buyers deposit: what `far-mesh deposits make` needs besides the node (no ledger)."""

    deposit_contract_address: Wallet | None = Field(
        default=None, description="Address of the FarDeposit contract buyers pay $FAR into (`far-mesh chain deploy`)"
    )
    deposit_confirmations: int = Field(
        default=12,
        ge=1,
        le=1000,
        description="Blocks a deposit needs (its own included) before the buyer's balance is credited; deeper "
        "than any reorganisation the chain may have (one deeper is detected and rescanned, docs/deposits.md)",
    )
