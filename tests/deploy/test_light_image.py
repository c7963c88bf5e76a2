"""The light image's promise: gateway, accounting, portal, payouts and migrate run with no torch, petals or hivemind."""

import subprocess
import sys
import textwrap

from tests.deploy.manifests import REPO

BLOCKED = ("torch", "petals", "hivemind", "transformers", "tokenizers", "bitsandbytes", "accelerate", "peft")

# Runs in a fresh interpreter: a meta path hook makes the heavy packages unimportable, as in the light image,
# then every module of the light rooms is imported and the CLI parser built.
SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = {blocked!r}

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"{{name}} is not installed in the light image", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    for room in ("protocol", "streams", "schema", "gateway", "accounting", "payouts", "portal", "chain"):
        package = importlib.import_module(room)
        for info in pkgutil.walk_packages(package.__path__, room + "."):
            if not info.name.endswith(".__main__"):  # importing it would run the process
                importlib.import_module(info.name)
    import cli.main
    cli.main.build_parser()
    import gateway.app, accounting.consumer, accounting.service
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("light ok")
    """
).format(blocked=BLOCKED)


def test_gateway_accounting_and_the_cli_import_without_torch_petals_or_hivemind() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("light ok")
