"""The client factory against a real local swarm: same tokens as the model run locally, over both servers."""

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from mesh.announce import wallet_from_public_name
from mesh.client import ClientLimits, MeshClient, open_client
from mesh.local_swarm import LocalSwarm
from tests.fixtures.swarm import SWARM_WALLETS
from tests.mesh.greedy import greedy_locally, greedy_through_swarm, off_main_thread

pytestmark = pytest.mark.swarm

PROMPT = "The mesh streams tokens: café 🚀"
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def client(two_server_swarm: LocalSwarm) -> Iterator[MeshClient]:
    client = off_main_thread(open_client, two_server_swarm.models[0], two_server_swarm.initial_peers)
    yield client
    off_main_thread(client.close)


def test_greedy_tokens_through_the_swarm_equal_the_model_run_locally_and_use_both_servers(
    client: MeshClient, two_server_swarm: LocalSwarm
) -> None:
    input_ids = client.tokenizer(PROMPT, return_tensors="pt").input_ids

    tokens, spans = off_main_thread(greedy_through_swarm, client, input_ids, NEW_TOKENS)

    assert tokens == greedy_locally(client, input_ids, NEW_TOKENS)
    assert spans == {(s.peer_id, s.plan.start_block, s.plan.end_block) for s in two_server_swarm.servers}


def test_the_client_is_bounded_by_client_limits(client: MeshClient) -> None:
    assert client.model.config.max_retries == ClientLimits().max_retries
    assert client.model.config.dht_prefix == client.spec.dht_prefix


def test_each_server_announces_its_wallet_in_the_dht(two_server_swarm: LocalSwarm) -> None:
    spec = two_server_swarm.models[0]
    infos = two_server_swarm.module_infos(str(spec.dht_prefix), 4)

    announced = {
        peer_id.to_base58(): wallet_from_public_name(server_info.public_name)
        for info in infos
        for peer_id, server_info in info.servers.items()
    }

    servers = two_server_swarm.servers
    assert announced == {server.peer_id: wallet for server, wallet in zip(servers, SWARM_WALLETS, strict=True)}


def test_no_server_is_asked_to_hand_its_outputs_to_the_next_one(
    client: MeshClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Petals' server-to-server handoff lets the next server process whichever copy of a step arrives first: an
    upstream server could return honest outputs to the worker (what a spot check records as the next span's
    inputs) and push something else to the next server, whose check then fails for the upstream's doing. With
    the handoff off, no request names a next server, so each server computes exactly what the worker sent it."""
    from hivemind import MSGPackSerializer

    from mesh.compat import petals
    from mesh.session import SwarmSession

    server_session = petals.client.inference_session._ServerInferenceSession
    step = server_session._step
    metadata: list[dict[str, object]] = []

    async def spying(self: object, request: object) -> object:
        metadata.append(MSGPackSerializer.loads(request.metadata))  # type: ignore[attr-defined]
        return await step(self, request)

    monkeypatch.setattr(server_session, "_step", spying)

    def three_steps() -> None:
        session = SwarmSession(client.model, max_length=8)
        try:
            for tokens in ([1, 2, 3], [4], [5]):
                session.step(tokens)
        finally:
            session.close()

    off_main_thread(three_steps)
    assert len(metadata) == 6  # two servers, three steps
    assert not [m for m in metadata if m.get("next_servers")]
    assert client.model.config.use_server_to_server is False


def test_a_session_times_each_servers_decode_steps_per_block_of_its_span_and_not_its_prefill(
    client: MeshClient, two_server_swarm: LocalSwarm
) -> None:
    from mesh.peer_speed import PeerSpeeds
    from mesh.session import SpanRecorder, SwarmSession

    speeds, prefill_only = PeerSpeeds(), PeerSpeeds()

    def steps(speeds: PeerSpeeds, tokens: list[list[int]]) -> None:
        session = SwarmSession(client.model, max_length=8, recorder=SpanRecorder(), speeds=speeds)
        try:
            for step in tokens:
                session.step(step)
        finally:
            session.close()

    off_main_thread(steps, speeds, [[1, 2, 3], [4], [5]])
    off_main_thread(steps, prefill_only, [[1, 2, 3]])
    figures = speeds.snapshot()
    assert set(figures) == {server.peer_id for server in two_server_swarm.servers}
    assert all(0 < figure.s_per_block < 1 for figure in figures.values())
    assert prefill_only.snapshot() == {}


def test_re_reading_the_swarm_gives_up_after_the_request_timeout_when_the_updater_never_answers() -> None:
    # Petals' own update(wait=True) would wait for ever here: the updater thread retries an unreachable DHT.
    never_ready = SimpleNamespace(
        update=lambda wait: None, ready=threading.Event(), config=SimpleNamespace(request_timeout=0.2)
    )
    model = SimpleNamespace(transformer=SimpleNamespace(h=SimpleNamespace(sequence_manager=never_ready)))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not re-read within 0.2 s"):
        MeshClient(spec=None, model=model, tokenizer=None).refresh_routes()  # type: ignore[arg-type]
    assert time.monotonic() - started < 5


def test_re_reading_the_swarm_asks_again_when_a_read_fails_rather_than_waiting_out_the_updaters_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Petals' updater sleeps a whole update period after a read that raised: only a second request reads again soon.
    from mesh import client as client_module

    monkeypatch.setattr(client_module, "REREAD_NUDGE_S", 0.05)
    ready = threading.Event()
    requests: list[bool] = []

    def update(wait: bool) -> None:
        ready.clear()
        requests.append(wait)
        if len(requests) == 3:  # the first two reads fail, the third answers
            ready.set()

    manager = SimpleNamespace(update=update, ready=ready, config=SimpleNamespace(request_timeout=5.0))
    started = time.monotonic()
    client_module.reread_swarm(manager)
    assert requests == [False, False, False]
    assert time.monotonic() - started < 2
