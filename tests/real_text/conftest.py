"""What the real-text tests add to the session's one `smollm2_swarm`: a worker fleet, and a gateway selling SmolLM2.

- `smollm2_fleet` (package): an in-process worker fleet (`tests.fixtures.workers.RunningFleet`) serving
  SmolLM2-135M-Instruct from `smollm2_swarm`, on the session's Redis; started once for every module here and
  stopped when they are done, so no later test meets its snapshots.
- `smollm2_gateway` (module): the URL of a `far-mesh gateway` whose catalogue sells SmolLM2 as its default model
  (as `make run`'s does), over the same Redis and the test ledger, so what a client of `make run` sends reaches the
  real model; an omitted `max_tokens` is capped at `SMOLLM2_GATEWAY_MAX_TOKENS` to keep each reply short.
"""

import json
from collections.abc import Iterator

import pytest

from devstack.harness.gateway import GATEWAY_ENV, start_gateway, stop_gateway
from mesh.local_swarm import LocalSwarm
from protocol.catalog import ModelSpec
from tests.fixtures.workers import RunningFleet, settings_for

SMOLLM2_GATEWAY_MAX_TOKENS = 20
"""What the README's curl asks for (a request over the cap is refused), enough for the quick starts to say a
sentence, few enough that each costs a second or two of the swarm."""


@pytest.fixture(scope="package")
def smollm2_fleet(redis_url: str, smollm2_swarm: LocalSwarm, smollm2: ModelSpec) -> Iterator[RunningFleet]:
    fleet = RunningFleet(settings_for(redis_url, smollm2_swarm.initial_peers, [smollm2])).start()
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def smollm2_gateway(
    smollm2_fleet: RunningFleet,
    smollm2: ModelSpec,
    redis_url: str,
    migrated_postgres_dsn: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    env = GATEWAY_ENV | {
        "REDIS_URL": redis_url,
        "POSTGRES_URL": migrated_postgres_dsn,
        "FAR_MESH_MODELS": json.dumps([smollm2.model_dump(mode="json")]),
        "DEFAULT_MODEL_ID": smollm2.model_id,
        "GATEWAY_MAX_TOKENS": str(SMOLLM2_GATEWAY_MAX_TOKENS),
    }
    process, url = start_gateway(env, tmp_path_factory.mktemp("smollm2-gateway") / "gateway.log")
    yield url
    stop_gateway(process)
