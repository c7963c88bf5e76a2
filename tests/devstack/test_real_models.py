"""`far-mesh dev` (`make run`) serves SmolLM2 as its default model, split over two servers so a route crosses
servers, and the tiny models beside it; `--tiny-only` serves the tiny ones alone, as the tests' system does (#27)."""

from pathlib import Path

import pytest

from devstack.system import LocalSystem, SystemPlan
from protocol.catalog import ModelSpec


def test_the_real_model_is_the_default_split_over_two_servers_with_the_tiny_ones_beside_it(
    tmp_path: Path, tiny_models: tuple[ModelSpec, ...], smollm2: ModelSpec
) -> None:
    system = LocalSystem(SystemPlan(state_dir=tmp_path, cache_dir=tmp_path, real_models=True))
    system.models = (smollm2, *tiny_models)

    spans = [(plan.model.model_id, plan.start_block, plan.end_block) for plan in system._server_plans()]

    assert spans == [
        ("smollm2-135m-instruct", 0, 15),
        ("smollm2-135m-instruct", 15, 30),
        ("far-tiny-llama-4", 0, 4),
        ("far-tiny-llama-6", 0, 6),
    ]


def test_far_mesh_dev_serves_the_real_model_unless_told_tiny_only() -> None:
    import argparse

    from devstack import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())

    assert parser.parse_args(["dev"]).tiny_only is False
    assert parser.parse_args(["dev", "--tiny-only"]).tiny_only is True


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
