"""The short chaos soak (issue #29), run on request only: `FAR_MESH_SOAK=1 .venv/bin/python -m pytest tests/soak`.

About four minutes of wall time on the project's shared 2-core machine (222.7 s measured, seed 6: half a minute to
start the system, 180 s of load and faults, the rest to settle, check and stop), which CI's budget cannot take
today; the integrator decides whether `make test` runs it. FAR_MESH_SOAK_SEED replays a run; without it each run
draws a seed and prints it.
"""

import os
import random
from pathlib import Path

import pytest

from devstack.harness.soak.run import run_soak

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.swarm,
    pytest.mark.skipif(os.environ.get("FAR_MESH_SOAK") != "1", reason="the soak runs only with FAR_MESH_SOAK=1"),
]

SHORT_SOAK_S = 180.0


@pytest.mark.timeout(900)
def test_the_short_soak_loses_nothing_and_bills_nothing_twice(tmp_path: Path) -> None:
    seed = int(os.environ.get("FAR_MESH_SOAK_SEED") or random.SystemRandom().randrange(2**31))
    report = run_soak(seed, SHORT_SOAK_S, tmp_path)
    assert report.passed, report.summary()
