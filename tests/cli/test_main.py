"""`far-mesh`: one entry point, light enough for the gateway's image, with errors that name the variable."""

import subprocess
import sys

import pytest

from cli.main import main

HEAVY = ("torch", "petals", "hivemind", "transformers")


def test_help_lists_the_subcommands_without_loading_torch_or_petals() -> None:
    probe = (
        "import sys, contextlib, io\n"
        "from cli.main import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    build_parser().format_help()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POSTGRES_URL", "nonsense")
    assert main(["migrate"]) == 2
    assert "POSTGRES_URL" in capsys.readouterr().err


def test_the_readmes_settings_table_is_the_one_the_code_generates() -> None:
    from pathlib import Path

    from cli.settings_reference import settings_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    between = readme.split("<!-- settings-table:start -->\n")[1].split("<!-- settings-table:end -->")[0]
    assert between == settings_table(), "README.md is stale: paste the output of `far-mesh settings` into it"
