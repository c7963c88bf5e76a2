"""The README's SDK quick start, run as written against the live system: only the key ("...") is filled in.

`FarMesh(api_key=...)` finds the gateway through FARLABS_BASE_URL, which is how the seed's snippets run
unchanged against a gateway that is not on localhost:8100.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.system import SystemUnderTest
from tests.sdk.node import SDK_JS, built

pytestmark = [pytest.mark.e2e, pytest.mark.swarm]

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start(language: str) -> str:
    section = README.read_text().split("\n## SDKs\n", 1)[1].split("\n## ", 1)[0]
    (snippet,) = re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)
    return snippet


def run(argv: list[str], sut: SystemUnderTest, cwd: Path | None = None) -> str:
    env = os.environ | {"FARLABS_BASE_URL": sut.url}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_python_quick_start_prints_the_reply(e2e_system: SystemUnderTest) -> None:
    snippet = quick_start("python")
    assert 'FarMesh(api_key="...")' in snippet and 'mesh.chat("Explain quantum computing")' in snippet
    reply = run([sys.executable, "-c", snippet.replace('"..."', repr(e2e_system.system.api_key))], e2e_system)
    assert reply  # sampled at the gateway's default temperature: its length varies, its presence does not


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is needed for the TypeScript SDK")
def test_the_typescript_quick_start_prints_the_reply(e2e_system: SystemUnderTest) -> None:
    snippet = quick_start("typescript")
    assert 'new FarMesh({ apiKey: "..." })' in snippet and 'mesh.chat("Explain quantum computing")' in snippet
    built()  # the snippet imports "@farlabs/sdk": from sdk/js, that resolves to the package's own build
    script = snippet.replace('"..."', f'"{e2e_system.system.api_key}"')
    reply = run(["node", "--input-type=module", "-e", script], e2e_system, cwd=SDK_JS)
    assert reply  # sampled at the gateway's default temperature: its length varies, its presence does not
