"""The gateway stays thin: importing the app loads no model code."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "petals", "hivemind", "workers", "mesh")


def test_importing_the_app_loads_no_model_code() -> None:
    code = (
        "import sys, gateway.app, gateway.commands\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
