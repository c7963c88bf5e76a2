"""`far-mesh portal` refuses bad settings at start-up, naming each variable, before it serves anything."""

import pytest

from cli.main import main


def test_missing_settings_stop_the_portal_naming_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("POSTGRES_URL", raising=False)
    monkeypatch.delenv("PORTAL_SECRET_KEY", raising=False)
    assert main(["portal"]) == 2
    error = capsys.readouterr().err
    assert "POSTGRES_URL" in error and "PORTAL_SECRET_KEY" in error


def test_a_short_secret_key_or_a_bad_domain_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/far_mesh")
    monkeypatch.setenv("PORTAL_SECRET_KEY", "short")
    monkeypatch.setenv("PORTAL_DOMAIN", "https://portal.example/")
    assert main(["portal"]) == 2
    error = capsys.readouterr().err
    assert "PORTAL_SECRET_KEY" in error and "PORTAL_DOMAIN" in error
