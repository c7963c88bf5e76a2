import json

import pytest

from protocol.settings import SettingsError
from workers.settings import WorkerSettings

BOOTSTRAP = "/ip4/127.0.0.1/tcp/31337/p2p/QmPeer"
MODELS = json.dumps([{"model_id": "m-a"}, {"model_id": "m-b"}])


def test_a_worker_serves_the_whole_catalog_by_default() -> None:
    settings = WorkerSettings.from_env(far_mesh_dht_bootstrap=BOOTSTRAP, far_mesh_models=MODELS, default_model_id="m-a")
    assert [m.model_id for m in settings.served_models] == ["m-a", "m-b"]
    assert settings.initial_peers == [BOOTSTRAP]


def test_a_worker_may_serve_a_subset_of_the_catalog() -> None:
    settings = WorkerSettings.from_env(
        far_mesh_dht_bootstrap=BOOTSTRAP, far_mesh_models=MODELS, default_model_id="m-a", worker_models="m-b"
    )
    assert [m.model_id for m in settings.served_models] == ["m-b"]


def test_a_model_outside_the_catalog_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="WORKER_MODELS names \\['m-z'\\]"):
        WorkerSettings.from_env(
            far_mesh_dht_bootstrap=BOOTSTRAP,
            far_mesh_models=MODELS,
            default_model_id="m-a",
            worker_models="m-z",
        )


def test_the_bootstrap_peers_are_required_and_must_be_multiaddrs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAR_MESH_DHT_BOOTSTRAP", raising=False)
    with pytest.raises(SettingsError, match="FAR_MESH_DHT_BOOTSTRAP"):
        WorkerSettings.from_env()
    with pytest.raises(SettingsError, match="FAR_MESH_DHT_BOOTSTRAP: .*multiaddrs"):
        WorkerSettings.from_env(far_mesh_dht_bootstrap="localhost:31337")
