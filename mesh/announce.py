"""How a node announces the wallet it is paid into: inside the `public_name` Petals publishes in the DHT.

Every Petals server already publishes a free-text `public_name` with its blocks, so the wallet rides there and
the coordinator reads it back from the same DHT record it routes by; no second registry can disagree. The
encoding is `far:<EIP-55 address>` at the end of the name, after an optional human label:
`"gpu-box-7 far:0x52908400098527886E0F7030069857D2E4169EE7"`.

The node launcher also announces its hardware in the label, as one `hw:<gpu>/<vram GB>/<quantization>` word
(`hw:NVIDIA_A100-SXM4-80GB/80/nf4`, `hw:cpu/0/none`), which accounting copies into the node registry. Like the
wallet it is the node's own claim, shown to people, never used to pay anyone.
"""

import re

from protocol.wallet import is_checksum_address, validate_wallet

WALLET_TAG = "far:"
HARDWARE_TAG = "hw:"
MAX_LABEL_LENGTH = 64
_ANNOUNCED_WALLET = re.compile(r"(?:^|\s)" + re.escape(WALLET_TAG) + r"(0x[0-9a-fA-F]{40})$")


class InvalidLabel(ValueError):
    """A node label that could not be announced unambiguously."""


def hardware_word(gpu_model: str | None, vram_gb: float | None, quant_type: str | None) -> str:
    """The `hw:` word of a label: GPU model (spaces as underscores; `cpu` without one), VRAM in GB, quantization."""
    gpu = "_".join((gpu_model or "cpu").split()).replace("/", "-")[:40]
    vram = f"{vram_gb:.0f}" if vram_gb else "0"
    return f"{HARDWARE_TAG}{gpu}/{vram}/{quant_type or 'auto'}"


def public_name_for(wallet: str, label: str | None = None, hardware: str | None = None) -> str:
    """The public name announcing `wallet` (EIP-55, checked here) after an optional label and hardware word."""
    validate_wallet(wallet)
    if label:
        label = " ".join(label.split())
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidLabel(f"label is {len(label)} characters; at most {MAX_LABEL_LENGTH} fit in a public name")
    return " ".join(part for part in (label, hardware, WALLET_TAG + wallet) if part)


def wallet_from_public_name(public_name: str | None) -> str | None:
    """The wallet a server announced, or None when its name announces none or a mistyped (bad checksum) one."""
    if not public_name:
        return None
    match = _ANNOUNCED_WALLET.search(public_name.strip())
    if match is None or not is_checksum_address(match.group(1)):
        return None
    return match.group(1)


PUBLIC_NAME_KEPT_CHARS = 256
"""The most of a server's public name the coordinator keeps: the name is free text any stranger announces, and it
travels with every token (a step's route, `protocol.served_steps`: a 200 KB name cost 200 KB a token), with every
swarm snapshot and into the node registry. The longest name `public_name_for` makes (a 64-character label, the
hardware word and the wallet) is under 170 characters, so an honest one is kept whole."""


def kept_public_name(public_name: str | None) -> str | None:
    """`public_name` cut to `PUBLIC_NAME_KEPT_CHARS`, announcing the wallet the whole name announces and no other.

    The wallet is read from the whole name and put back after the cut, since only the wallet is paid from it. The
    cut is marked by "...", which also keeps a wallet-like word that the cut happened to leave at the end from
    being read as one the name never announced."""
    if public_name is None or len(public_name) <= PUBLIC_NAME_KEPT_CHARS:
        return public_name
    wallet = wallet_from_public_name(public_name)
    tail = "..." if wallet is None else f"... {WALLET_TAG}{wallet}"
    return public_name[: PUBLIC_NAME_KEPT_CHARS - len(tail)] + tail
