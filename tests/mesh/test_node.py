"""The node launcher refuses what would fail later, and builds the server command real nodes and tests share."""

from pathlib import Path

import pytest

from cli.main import main
from mesh.node import (
    InvalidBlocks,
    ModelPathMissing,
    NodeConfig,
    PortTaken,
    QuantizationUnverifiable,
    check_node,
    parse_blocks,
    server_args,
)
from protocol.catalog import ModelSpec

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"
PEERS = ["/ip4/127.0.0.1/tcp/31337/p2p/QmNxzyESFVBkv7EafLn8yavWPfXrgxAzyskr7cai5mxaSA"]


def node(*args: str) -> list[str]:
    return ["node", "--initial-peers", *PEERS, *args]


def test_a_wallet_with_a_wrong_checksum_exits_2_naming_the_right_spelling(
    tiny_models: tuple[ModelSpec, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(node("--wallet", WALLET.lower(), "--model", str(tiny_models[0].source)))

    assert status == 2
    assert WALLET in capsys.readouterr().err


def test_a_missing_model_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(node("--wallet", WALLET, "--model", str(tmp_path / "nothing-here"))) == 2
    assert "nothing-here" in capsys.readouterr().err


def test_a_taken_port_exits_2(
    tiny_models: tuple[ModelSpec, ...], taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(node("--wallet", WALLET, "--model", str(tiny_models[0].source), "--port", str(taken_port))) == 2
    assert f"port {taken_port}" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["2", "2:2", "3:1", "-1:2", "a:b", ""])
def test_malformed_block_spans_are_refused(text: str) -> None:
    with pytest.raises(InvalidBlocks):
        parse_blocks(text)


def test_check_node_raises_specific_errors(tmp_path: Path, taken_port: int, tiny_models: tuple[ModelSpec, ...]) -> None:
    with pytest.raises(ModelPathMissing):
        check_node(NodeConfig(model_source=str(tmp_path), initial_peers=()))
    with pytest.raises(PortTaken):
        check_node(NodeConfig(model_source=str(tiny_models[0].source), initial_peers=(), port=taken_port))
    for quantized in ("int8", "nf4"):  # honest work the verifier would convict: refused before anything runs
        with pytest.raises(QuantizationUnverifiable, match="--quant-type none"):
            check_node(NodeConfig(model_source=str(tiny_models[0].source), initial_peers=(), quant_type=quantized))
    check_node(NodeConfig(model_source=str(tiny_models[0].source), initial_peers=(), quant_type="none"))


def test_the_server_command_announces_the_wallet_and_serves_the_span(tiny_models: tuple[ModelSpec, ...]) -> None:
    spec = tiny_models[0]
    config = NodeConfig(
        model_source=str(spec.source),
        initial_peers=tuple(PEERS),
        dht_prefix=spec.dht_prefix,
        wallet=WALLET,
        label="box",
        blocks=(0, 2),
        host="127.0.0.1",
        throughput=10.0,
    )

    args = server_args(config)

    assert args[0] == spec.source
    for flag, value in [
        ("--public_name", f"box far:{WALLET}"),
        ("--block_indices", "0:2"),
        ("--dht_prefix", spec.dht_prefix),
        ("--host_maddrs", "/ip4/127.0.0.1/tcp/0"),
        ("--initial_peers", PEERS[0]),
        ("--throughput", "10.0"),
    ]:
        assert args[args.index(flag) + 1] == value
