"""Shared settings: the seed's variables with their defaults, a catalog, and errors that name the variable."""

from decimal import Decimal

import pytest

from protocol.settings import CommonSettings, SettingsError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "LOG_LEVEL", "DEFAULT_MODEL_ID", "PRICE_PER_TOKEN_FAR", "FAR_MESH_MODELS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_seeds() -> None:
    settings = CommonSettings.from_env()
    assert str(settings.redis_url) == "redis://localhost:6379/0"
    assert settings.log_level == "INFO"
    assert settings.catalog.model_ids == ["meta-llama/Llama-2-7b-chat-hf"]
    assert settings.catalog.price_of(settings.catalog.models[0]) == Decimal("0.0001")


def test_a_catalog_from_json_prices_each_model_or_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_MODEL_ID", "b")
    monkeypatch.setenv("FAR_MESH_MODELS", '[{"model_id": "a", "price_per_token_far": "0.5"}, {"model_id": "b"}]')
    catalog = CommonSettings.from_env().catalog
    a, b = catalog.get("a"), catalog.get("b")
    assert a is not None and b is not None and catalog.get("c") is None
    assert (catalog.price_of(a), catalog.price_of(b)) == (Decimal("0.5"), Decimal("0.0001"))


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("REDIS_URL", "nonsense", "REDIS_URL: "),
        ("PRICE_PER_TOKEN_FAR", "-1", "PRICE_PER_TOKEN_FAR: "),
        ("PRICE_PER_TOKEN_FAR", "0.1234567890123456789", "PRICE_PER_TOKEN_FAR: "),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL: "),
        ("FAR_MESH_MODELS", "not json", "FAR_MESH_MODELS: "),
        ("FAR_MESH_TRACING", "jaeger", "FAR_MESH_TRACING: "),
        ("FAR_MESH_MODELS", '[{"model_id": "x"}]', "DEFAULT_MODEL_ID 'meta-llama/Llama-2-7b-chat-hf' is not one of"),
    ],
)
def test_a_bad_variable_fails_start_up_with_its_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=problem):
        CommonSettings.from_env()


def test_a_password_in_a_bad_url_is_not_echoed_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:s3cret@host:1/0")
    with pytest.raises(SettingsError) as caught:
        CommonSettings.from_env()
    assert "s3cret" not in str(caught.value)
