"""The hardware a node launcher announces (`hw:` in its public name) reaches the node registry's empty columns."""

from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from accounting.registry import hardware_of, sync_registry
from mesh.announce import hardware_word, public_name_for, wallet_from_public_name
from mesh.node import NodeConfig, server_args
from protocol.swarm import ServerSnapshot, SwarmSnapshot
from tests.fixtures.ledger import unique_id

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"


def test_what_the_launcher_announces_the_registry_reads_back() -> None:
    name = public_name_for(WALLET, "gpu box 7", hardware_word("NVIDIA A100-SXM4-80GB", 79.6, "nf4"))
    assert name == f"gpu box 7 hw:NVIDIA_A100-SXM4-80GB/80/nf4 far:{WALLET}"
    assert wallet_from_public_name(name) == WALLET
    assert hardware_of(name) == ("NVIDIA A100-SXM4-80GB", Decimal(80), "nf4")
    assert hardware_of(public_name_for(WALLET, None, hardware_word(None, None, None))) == ("cpu", None, None)
    assert hardware_of(f"box far:{WALLET}") == (None, None, None)
    assert hardware_of("hw:evil/9999999/nf4") == (None, None, None)


def test_the_node_command_announces_its_hardware() -> None:
    config = NodeConfig(
        model_source="org/model", initial_peers=(), wallet=WALLET, hardware=hardware_word(None, None, "int8")
    )
    args = server_args(config)
    assert args[args.index("--public_name") + 1] == f"hw:cpu/0/int8 far:{WALLET}"


async def test_a_snapshot_fills_the_gpu_vram_and_quantization_columns(migrated_postgres_dsn: str) -> None:
    peer = unique_id("12D3KooWhw")
    snapshot = SwarmSnapshot(
        model_id="test/hw",
        dht_prefix="test-hw",
        num_blocks=4,
        taken_at=datetime.now(UTC),
        servers=(
            ServerSnapshot(
                peer_id=peer,
                public_name=public_name_for(WALLET, None, hardware_word("NVIDIA L4", 24, "int8")),
                wallet=WALLET,
                start_block=0,
                end_block=4,
                throughput=10.0,
                state="online",
            ),
        ),
    )
    connection = await asyncpg.connect(migrated_postgres_dsn)
    try:
        await sync_registry(connection, [snapshot])
        node = await connection.fetchrow("SELECT gpu_model, vram_gb FROM far_nodes WHERE node_id = $1", peer)
        quantization = await connection.fetchval(
            "SELECT quantization FROM far_node_models WHERE node_id = $1 AND model_id = 'test/hw'", peer
        )
    finally:
        await connection.close()
    assert (node["gpu_model"], node["vram_gb"], quantization) == ("NVIDIA L4", Decimal("24.00"), "int8")
