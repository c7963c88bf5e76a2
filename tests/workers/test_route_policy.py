"""workers.route_policy when the client's DHT does not answer: the policy is planned within the request timeout,
the bans still apply and no peer on probation is kept out. Redis is fakeredis; the sequence manager a stand-in."""

import time
from concurrent.futures import Future
from typing import Any

import fakeredis
import pytest

from protocol import keys
from tests.verifier.helpers import PEER_A, FakeServed
from workers import route_policy
from workers.route_policy import apply_route_policy

PEER_B = "QmUHKQbyJx3dYCbZ4AyEc3MYGCR4SCmKDkLeKdCNRsrQR4"


class SilentDht:
    """A DHT whose process is gone: a coroutine handed to it is never run, its future never resolved."""

    def run_coroutine(self, coroutine: Any, *, return_future: bool = False) -> "Future[Any]":
        assert return_future, "a blocking call would wait forever"
        return Future()


async def test_a_dht_that_never_answers_keeps_the_bans_and_no_peer_on_probation_out_within_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from hivemind.p2p import PeerID

    redis = fakeredis.FakeAsyncRedis()
    served = FakeServed([PEER_A, PEER_B])
    served.manager.dht = SilentDht()  # type: ignore[attr-defined]
    served.manager.block_uids = ("tiny.0", "tiny.1")  # type: ignore[attr-defined]
    served.manager.config.request_timeout = 0.2
    served.manager.blocked_servers = {PeerID.from_base58(PEER_A)}  # an earlier plan kept A out while on probation
    monkeypatch.setattr(route_policy, "_coverage", {})  # no view read earlier, in this test or another
    await redis.zadd(keys.BANNED_NODES, {PEER_B: time.time() + 60})
    await redis.hset(keys.NODE_REPUTATION, mapping={PEER_A: "0.1"})
    started = time.monotonic()

    assert await apply_route_policy(redis, served) == "avoid-banned:1"  # type: ignore[arg-type]

    assert time.monotonic() - started < 5
    assert {peer.to_base58() for peer in served.manager.blocked_servers} == {PEER_B}
    assert "peers on probation not avoided" in caplog.text
