"""The README's client snippets, read from README.md and run as written against a gateway that sells SmolLM2 as
its default model, as `make run`'s does (`smollm2_gateway`): each prints English (#27's "done when"). Only the key
("...", $KEY) and the gateway's address are filled in; `FarMesh(api_key=...)` finds the gateway through
FARLABS_BASE_URL, which is how the quick starts run unchanged against a gateway that is not on localhost:8100.

Every snippet asks for greedy decoding, so each reply is the model's one answer, and the checks hold for any
sensible English answer (`assert_english`), never for the noise of random weights."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devstack.harness.gateway import issue_key_sync
from devstack.harness.http_client import tls_context
from tests.real_text.helpers import assert_english, readme_snippet
from tests.sdk.node import SDK_JS, built

pytestmark = pytest.mark.swarm

CONNECTED_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def gateway(smollm2_gateway: str) -> Iterator[str]:
    """The gateway once it sees SmolLM2's swarm (a worker's snapshot, which an earlier test's flush may have
    taken), so the first snippet is not refused for an unavailable model."""
    deadline = time.monotonic() + CONNECTED_TIMEOUT_S
    while httpx.get(f"{smollm2_gateway}/mesh/status", timeout=5, verify=tls_context()).json()["status"] != "connected":
        assert time.monotonic() < deadline, "the gateway never saw SmolLM2's swarm connected"
        time.sleep(0.2)
    yield smollm2_gateway


@pytest.fixture(scope="module")
def api_key(migrated_postgres_dsn: str) -> str:
    return issue_key_sync(migrated_postgres_dsn)


def run(argv: list[str], gateway: str, **kwargs: Any) -> str:
    """A snippet in a process of its own, as a reader runs it (nothing it leaves open outlives it here)."""
    env = os.environ | {"FARLABS_BASE_URL": gateway}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return str(done.stdout)


def test_the_python_quick_start_prints_english(gateway: str, api_key: str) -> None:
    snippet = readme_snippet("python", "from farlabs import FarMesh")
    assert 'FarMesh(api_key="...")' in snippet and 'mesh.chat("Explain quantum computing"' in snippet

    printed = run([sys.executable, "-c", snippet.replace('"..."', repr(api_key))], gateway)

    assert_english(printed, mentions="quantum", at_least_words=8)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is needed for the TypeScript SDK")
def test_the_typescript_quick_start_prints_english(gateway: str, api_key: str) -> None:
    snippet = readme_snippet("typescript", 'from "@farlabs/sdk"')
    assert 'new FarMesh({ apiKey: "..." })' in snippet and 'mesh.chat("Explain quantum computing"' in snippet
    built()  # the snippet imports "@farlabs/sdk": from sdk/js, that resolves to the package's own build
    script = snippet.replace('"..."', json.dumps(api_key))

    printed = run(["node", "--input-type=module", "-e", script], gateway, cwd=SDK_JS)

    assert_english(printed, mentions="quantum", at_least_words=8)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README's first request is a curl command")
def test_the_curl_streams_paris_token_by_token(gateway: str, api_key: str) -> None:
    snippet = readme_snippet("bash", "The capital of France is")
    command = snippet.replace("localhost:8100", gateway.removeprefix("http://"))
    done = subprocess.run(
        ["bash", "-c", command], env=os.environ | {"KEY": api_key}, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    events = [json.loads(line.removeprefix("data: ")) for line in done.stdout.splitlines() if line.startswith("data: ")]
    assert events and events[-1].get("done") is True, done.stdout
    tokens = [event for event in events if "token" in event]
    assert len(tokens) > 1 and all("cost_far" in event for event in tokens)  # streamed, each with its running cost
    assert "".join(event["token"] for event in tokens).strip().startswith("Paris")


def test_the_openai_client_snippet_prints_that_paris_is_the_capital(gateway: str, api_key: str) -> None:
    snippet = readme_snippet("python", "from openai import OpenAI")
    code = snippet.replace('"http://localhost:8100/v1"', repr(f"{gateway}/v1")).replace('"..."', repr(api_key))

    printed = run([sys.executable, "-c", code], gateway)

    assert_english(printed, mentions="Paris", at_least_words=4)
