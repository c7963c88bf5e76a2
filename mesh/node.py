"""The node launcher: how a Petals server is started to serve blocks into a swarm, and paid for them.

`far-mesh node` (what a GPU provider runs) and the local swarm (what development and tests run) both build a
server's command line with `server_command`, so the swarm the tests exercise is started exactly as real nodes
are. The server is petals' own `run_server`, entered through `mesh.petals_cli` so `mesh.compat` applies.
"""

from dataclasses import dataclass
from pathlib import Path

from mesh.announce import public_name_for
from mesh.petals_cli import command_line
from mesh.ports import port_is_taken

QUANT_TYPES = ("none", "int8", "nf4")
"""Weight quantization Petals servers offer (`--quant_type`): none, 8-bit, or 4-bit NormalFloat."""


class NodeRefused(Exception):
    """A node cannot start as configured; the message says what to change."""


class ModelPathMissing(NodeRefused):
    """The model is given as a local path, and nothing is there."""


class PortTaken(NodeRefused):
    """The TCP port the node (or the DHT) should listen on is already in use."""


class InvalidBlocks(NodeRefused):
    """A block span that cannot be served."""


class QuantizationUnverifiable(NodeRefused):
    """Quantized weights (int8, nf4): the verifier's tolerance follows the announced dtype alone, so an honest
    quantized server's spans fall outside it and would be convicted, slashed and banned (docs/verification.md)."""


@dataclass(frozen=True)
class NodeConfig:
    """One Petals server. `blocks` is a half-open span `(start, end)`; without it Petals picks `num_blocks`."""

    model_source: str
    initial_peers: tuple[str, ...]
    dht_prefix: str | None = None
    wallet: str | None = None
    label: str | None = None
    blocks: tuple[int, int] | None = None
    num_blocks: int | None = None
    host: str = "0.0.0.0"
    port: int | None = None
    throughput: float | None = None
    """Announced tokens/s; None lets Petals measure it (slow on first start; the local swarm fixes it)."""
    device: str | None = None
    torch_dtype: str = "auto"
    identity_path: Path | None = None
    quant_type: str | None = None
    """One of QUANT_TYPES; None lets Petals choose (int8 on GPUs for large models, none on CPU)."""
    hardware: str | None = None
    """The `hw:` word announced in the public name (`mesh.announce.hardware_word`); None announces none."""
    loopback_only: bool = False
    """No relays and no reachability check: the swarm lives on 127.0.0.1 (development and tests)."""

    @property
    def public_name(self) -> str | None:
        if self.wallet is None:
            return " ".join(part for part in (self.label, self.hardware) if part) or None
        return public_name_for(self.wallet, self.label, self.hardware)


def detect_gpu(device: str | None) -> tuple[str | None, float | None]:
    """(GPU model, VRAM in GB) of the CUDA device the server will use; (None, None) on CPU. Imports torch."""
    if device is not None and not device.startswith("cuda"):
        return None, None
    import torch

    if not torch.cuda.is_available():
        return None, None
    index = int(device.partition(":")[2] or 0) if device else 0
    properties = torch.cuda.get_device_properties(index)
    return str(properties.name), round(properties.total_memory / 1e9, 1)


def parse_blocks(text: str) -> tuple[int, int]:
    """`"0:2"` -> (0, 2), the half-open span Petals' `--block_indices` takes."""
    start, sep, end = text.partition(":")
    try:
        span = (int(start), int(end))
    except ValueError:
        span = None
    if not sep or span is None or span[0] < 0 or span[1] <= span[0]:
        raise InvalidBlocks(f"blocks {text!r} must be START:END with 0 <= START < END, e.g. 0:2")
    return span


def looks_like_path(source: str) -> bool:
    """Whether a model source names a local directory rather than a hub id such as `org/model`."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()


def check_node(config: NodeConfig) -> None:
    """Refuse, before any process starts, what would otherwise fail inside a server minutes later."""
    if looks_like_path(config.model_source) and not (Path(config.model_source).expanduser() / "config.json").is_file():
        raise ModelPathMissing(f"model path {config.model_source} has no config.json; generate or download it first")
    if config.port and port_is_taken(config.port, "127.0.0.1" if config.host == "0.0.0.0" else config.host):
        raise PortTaken(f"port {config.port} is already in use; choose another --port or stop what holds it")
    if config.quant_type not in (None, "none"):
        raise QuantizationUnverifiable(
            f"--quant-type {config.quant_type}: spot checks would convict a quantized server's honest work (the "
            "verifier has no tolerance for quantized weights yet); serve with --quant-type none"
        )
    config.public_name  # noqa: B018 - validates wallet and label now, not in the server


def server_args(config: NodeConfig) -> list[str]:
    """Arguments for petals' `run_server`."""
    args = [
        str(Path(config.model_source).expanduser()) if looks_like_path(config.model_source) else config.model_source
    ]
    args += ["--initial_peers", *config.initial_peers] if config.initial_peers else ["--new_swarm"]
    args += ["--host_maddrs", f"/ip4/{config.host}/tcp/{config.port or 0}"]
    args += ["--throughput", "auto" if config.throughput is None else str(config.throughput)]
    args += ["--torch_dtype", config.torch_dtype]
    if config.dht_prefix:
        args += ["--dht_prefix", config.dht_prefix]
    if config.blocks is not None:
        args += ["--block_indices", f"{config.blocks[0]}:{config.blocks[1]}"]
    elif config.num_blocks is not None:
        args += ["--num_blocks", str(config.num_blocks)]
    if config.public_name:
        args += ["--public_name", config.public_name]
    if config.device:
        args += ["--device", config.device]
    if config.identity_path is not None:
        args += ["--identity_path", str(config.identity_path)]
    if config.quant_type is not None:
        args += ["--quant_type", config.quant_type]
    if config.loopback_only:
        args += ["--no_auto_relay", "--skip_reachability_check"]
    return args


def server_command(config: NodeConfig) -> list[str]:
    return command_line("run_server", server_args(config))
