"""@farlabs/sdk as a package: `npm run build` writes ESM and CommonJS builds that both load, with their types."""

import shutil
import subprocess

import pytest

from tests.sdk.node import SDK_JS, built


@pytest.mark.skipif(shutil.which("npm") is None, reason="Node.js and npm are needed for the TypeScript SDK")
def test_the_package_builds_to_esm_and_commonjs_with_type_declarations() -> None:
    built()
    for name in ("index.js", "index.cjs", "index.d.ts", "index.d.cts"):
        assert (SDK_JS / "dist" / name).stat().st_size > 0
    probe = "const {{ FarMesh, RateLimited }} = {}; console.log(typeof FarMesh, new RateLimited('x').status)"
    loads = {
        "commonjs": ["node", "-e", probe.format("require('@farlabs/sdk')")],
        "esm": ["node", "--input-type=module", "-e", probe.format("await import('@farlabs/sdk')")],
    }
    for kind, argv in loads.items():
        done = subprocess.run(argv, cwd=SDK_JS, capture_output=True, text=True, timeout=60)
        assert done.stdout.split() == ["function", "429"], f"{kind}: {done.stdout}{done.stderr}"
