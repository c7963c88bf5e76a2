"""The model -> Redis map (FAR_MESH_MODEL_REDIS): one setting every process routes by, checked at start-up."""

import pytest

from protocol.redis_shards import RedisShards, redacted
from protocol.settings import CommonSettings, SettingsError

CATALOG = '[{"model_id": "a"}, {"model_id": "b"}, {"model_id": "c"}]'


@pytest.fixture(autouse=True)
def two_model_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "FAR_MESH_MODEL_REDIS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAR_MESH_MODELS", CATALOG)
    monkeypatch.setenv("DEFAULT_MODEL_ID", "a")


def test_without_a_map_every_model_lives_on_the_home_redis() -> None:
    shards = CommonSettings.from_env().redis_shards
    assert shards.urls == ("redis://localhost:6379/0",)
    assert all(shards.is_home(m) and shards.url_for(m) == shards.home for m in "abc")


def test_a_mapped_model_lives_on_its_shard_and_the_others_stay_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://home:6379/0")
    monkeypatch.setenv("FAR_MESH_MODEL_REDIS", '{"b": "redis://shard-1:6379/0", "c": "redis://shard-1:6379/0"}')
    shards = CommonSettings.from_env().redis_shards
    assert shards.url_for("a") == "redis://home:6379/0" and shards.is_home("a")
    assert shards.url_for("b") == shards.url_for("c") == "redis://shard-1:6379/0"
    assert not shards.is_home("b")
    assert shards.urls == ("redis://home:6379/0", "redis://shard-1:6379/0")  # one consumer per Redis, not per model


def test_a_model_mapped_to_the_home_redis_is_home() -> None:
    shards = RedisShards("redis://home:6379/0", {"a": "redis://home:6379/0"})
    assert shards.is_home("a") and shards.urls == ("redis://home:6379/0",)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('{"zzz": "redis://shard:6379/0"}', "FAR_MESH_MODEL_REDIS names ['zzz']"),
        ('{"b": "http://shard:6379/0"}', "FAR_MESH_MODEL_REDIS: "),
        ('["redis://shard:6379/0"]', "FAR_MESH_MODEL_REDIS: "),
        ("not json", "FAR_MESH_MODEL_REDIS: "),
    ],
)
def test_a_bad_map_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("FAR_MESH_MODEL_REDIS", value)
    with pytest.raises(SettingsError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        CommonSettings.from_env()


def test_a_shards_password_is_never_echoed_nor_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAR_MESH_MODEL_REDIS", '{"b": "http://:hunter2secret@shard:6379/0"}')
    with pytest.raises(SettingsError) as caught:
        CommonSettings.from_env()
    assert "hunter2secret" not in str(caught.value)
    assert redacted("redis://:hunter2secret@shard:6380/1") == "redis://shard:6380/1"
