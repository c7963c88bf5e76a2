"""The TypeScript SDK's toolchain for the tests: its npm packages installed and its package built, each only
when out of date (the Makefile's install target runs the same `npm ci`)."""

import subprocess
from pathlib import Path

SDK_JS = Path(__file__).resolve().parents[2] / "sdk" / "js"


def _newest(paths: list[Path]) -> float:
    return max(p.stat().st_mtime for p in paths)


def npm_ready() -> None:
    """`npm ci` when node_modules is missing or older than the lock file."""
    stamp = SDK_JS / "node_modules" / ".installed-stamp"
    if stamp.exists() and stamp.stat().st_mtime >= (SDK_JS / "package-lock.json").stat().st_mtime:
        return
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SDK_JS, check=True)
    stamp.touch()


def built() -> None:
    """dist/ as `npm run build` writes it, rebuilt when a source or the build's configuration is newer."""
    npm_ready()
    outputs = [SDK_JS / "dist" / name for name in ("index.js", "index.cjs", "index.d.ts", "index.d.cts")]
    inputs = [*SDK_JS.joinpath("src").glob("*.ts"), SDK_JS / "package.json", SDK_JS / "tsup.config.ts"]
    if all(p.exists() for p in outputs) and min(p.stat().st_mtime for p in outputs) >= _newest(inputs):
        return
    build = subprocess.run(["npm", "run", "--silent", "build"], cwd=SDK_JS, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
