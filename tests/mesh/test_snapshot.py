import asyncio
import logging
import math
import time
from concurrent.futures import Future
from typing import Any

import pytest

from mesh.announce import PUBLIC_NAME_KEPT_CHARS
from mesh.snapshot import read_swarm_snapshot


class SilentDht:
    """A DHT whose process is gone: a coroutine handed to it is never run, its future never resolved."""

    def run_coroutine(self, coroutine: Any, *, return_future: bool = False) -> "Future[Any]":
        assert return_future, "a blocking call would wait forever"
        return Future()


def test_a_dht_that_never_answers_is_a_timeout_not_a_thread_stuck_forever() -> None:
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        read_swarm_snapshot(SilentDht(), "far-tiny", "far-tiny-prefix", 4, timeout_s=0.2)

    assert time.monotonic() - started < 5


class DhtHolding:
    """A DHT holding `records` (block uid -> peer id -> what that server stored there), read through Petals' own
    parsing as a live one is."""

    num_workers = None

    def __init__(self, records: dict[str, dict[str, tuple[Any, ...]]]) -> None:
        self._records = records

    def run_coroutine(self, coroutine: Any, *, return_future: bool = False) -> "Future[Any]":
        future: Future[Any] = Future()
        future.set_result(asyncio.run(coroutine(self, self)))
        return future

    async def get_many(self, uids: list[str], expiration_time: float, num_workers: int | None = None) -> dict[str, Any]:
        from hivemind.utils.timed_storage import ValueWithExpiration

        found: dict[str, Any] = {}
        for uid in uids:
            servers = {
                peer: ValueWithExpiration(record, math.inf) for peer, record in self._records.get(uid, {}).items()
            }
            found[uid] = ValueWithExpiration(servers, math.inf) if servers else None
        return found


HONEST = "QmSoLPppuBtQSGwKDZT2M73ULpjvfd3aZ6ha4oFGL1KrGM"
STRANGER = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"


def record(start: int, end: int, *, online: bool = True, public_name: str | None = None) -> tuple[Any, ...]:
    """What a server stores under each of its blocks' uids (Petals' `ServerInfo.to_tuple`)."""
    from mesh.compat import petals

    ds = petals.data_structures
    state = ds.ServerState.ONLINE if online else ds.ServerState.OFFLINE
    info = ds.ServerInfo(state=state, throughput=100.0, start_block=start, end_block=end, public_name=public_name)
    return tuple(info.to_tuple())


def swarm_with_a_stranger(stranger: tuple[Any, ...]) -> DhtHolding:
    """A four-block model `tiny` whose every block an honest server holds, and a stranger's record under block 3."""
    honest = record(0, 4, public_name=f"gpu-box far:{WALLET}")
    records = {f"tiny.{index}": {HONEST: honest} for index in range(4)}
    records["tiny.3"][STRANGER] = stranger
    return DhtHolding(records)


@pytest.mark.parametrize(
    "stranger",
    [
        pytest.param(record(3, 3), id="empty"),
        pytest.param(record(7, 9, online=False), id="past-the-end"),
        pytest.param(record(2, 9), id="reaching-past-the-end"),
    ],
)
def test_a_server_announcing_a_span_the_model_lacks_is_left_out_and_the_rest_of_the_snapshot_stands(
    stranger: tuple[Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = read_swarm_snapshot(swarm_with_a_stranger(stranger), "far-tiny", "tiny", 4, timeout_s=5)

    assert [(s.peer_id, s.start_block, s.end_block, s.wallet) for s in snapshot.servers] == [(HONEST, 0, 4, WALLET)]
    assert snapshot.healthy
    (warning,) = [r for r in caplog.records if r.name == "mesh.snapshot"]
    assert warning.levelno == logging.WARNING and STRANGER in warning.getMessage()


def test_an_honest_stranger_is_in_the_snapshot_beside_the_others() -> None:
    snapshot = read_swarm_snapshot(swarm_with_a_stranger(record(3, 4)), "far-tiny", "tiny", 4, timeout_s=5)

    assert [(s.peer_id, s.start_block, s.end_block) for s in snapshot.servers] == [(HONEST, 0, 4), (STRANGER, 3, 4)]


def test_a_huge_public_name_is_cut_in_the_snapshot_and_its_wallet_kept() -> None:
    huge = record(3, 4, public_name="x" * 100_000 + f" far:{WALLET}")
    snapshot = read_swarm_snapshot(swarm_with_a_stranger(huge), "far-tiny", "tiny", 4, timeout_s=5)

    stranger = next(s for s in snapshot.servers if s.peer_id == STRANGER)
    assert stranger.public_name is not None and len(stranger.public_name) <= PUBLIC_NAME_KEPT_CHARS
    assert stranger.wallet == WALLET
