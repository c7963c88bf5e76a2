"""The operator's accounting metrics: $FAR billed by model, and how much of each model's swarm is served."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from accounting import metrics
from protocol.swarm import ServerSnapshot, SwarmSnapshot

NOW = datetime(2025, 10, 10, 12, 0, tzinfo=UTC)


def snapshot(model_id: str, spans: list[tuple[int, int, str]], *, age_s: float = 0) -> SwarmSnapshot:
    servers = tuple(
        ServerSnapshot(peer_id=f"peer{i}", start_block=start, end_block=end, throughput=1.0, state=state)
        for i, (start, end, state) in enumerate(spans)
    )
    return SwarmSnapshot(
        model_id=model_id, dht_prefix="x", num_blocks=8, taken_at=NOW - timedelta(seconds=age_s), servers=servers
    )


def test_coverage_is_the_fraction_of_blocks_some_online_node_holds() -> None:
    metrics.record_coverage(
        [
            snapshot("test/full", [(0, 4, "online"), (4, 8, "online"), (2, 6, "online")]),
            snapshot("test/gap", [(0, 4, "online"), (4, 6, "offline"), (6, 8, "online")]),
        ],
        NOW,
    )
    assert metrics.SWARM_COVERAGE.labels("test/full")._value.get() == 1.0
    assert metrics.SWARM_COVERAGE.labels("test/gap")._value.get() == 0.75


def test_a_stale_snapshot_counts_as_no_coverage() -> None:
    metrics.record_coverage([snapshot("test/stale", [(0, 8, "online")], age_s=3600)], NOW)
    assert metrics.SWARM_COVERAGE.labels("test/stale")._value.get() == 0.0


def test_far_billed_adds_each_model_amount() -> None:
    before = metrics.FAR_BILLED.labels("test/billed")._value.get()
    metrics.record_billed({"test/billed": Decimal("0.25")})
    metrics.record_billed({"test/billed": Decimal("0.5")})
    assert metrics.FAR_BILLED.labels("test/billed")._value.get() - before == 0.75
