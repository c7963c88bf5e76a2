"""`far-mesh dev --real-models` serves SmolLM2 beside the tiny models, split over two servers so a route
crosses servers; the tiny default model and its split are unchanged (#27)."""

from pathlib import Path

import pytest

from devstack.system import LocalSystem, SystemPlan
from protocol.catalog import ModelSpec


def test_the_real_model_is_split_over_two_servers_after_the_tiny_ones(
    tmp_path: Path, tiny_models: tuple[ModelSpec, ...], smollm2: ModelSpec
) -> None:
    system = LocalSystem(SystemPlan(state_dir=tmp_path, cache_dir=tmp_path, real_models=True))
    system.models = (*tiny_models, smollm2)

    spans = [(plan.model.model_id, plan.start_block, plan.end_block) for plan in system._server_plans()]

    assert spans == [
        ("far-tiny-llama-4", 0, 2),
        ("far-tiny-llama-4", 2, 4),
        ("far-tiny-llama-6", 0, 6),
        ("smollm2-135m-instruct", 0, 15),
        ("smollm2-135m-instruct", 15, 30),
    ]


def test_the_procfile_catalogue_describes_the_real_model_when_the_swarm_line_serves_it(
    tiny_models: tuple[ModelSpec, ...], smollm2: ModelSpec
) -> None:
    from devstack.procfile_env import local_catalog

    assert smollm2.source is not None
    cache_dir = Path(smollm2.source).parent.parent
    catalog = local_catalog(["smollm2-135m-instruct", "far-tiny-llama-4"], cache_dir)

    assert [m.model_id for m in catalog] == ["far-tiny-llama-4", "smollm2-135m-instruct"]
    assert catalog[1] == smollm2
    with pytest.raises(ValueError, match="not-a-model"):
        local_catalog(["not-a-model"], cache_dir)
