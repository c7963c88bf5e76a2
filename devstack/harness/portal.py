"""The portal as a process: `far-mesh portal` on a free loopback port, for browser tests and the portal benchmark."""

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devstack.harness.http_client import serves
from mesh.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PortalServer:
    url: str
    domain: str
    process: subprocess.Popen[bytes]


def start_portal(dsn: str, redis_url: str, extra_env: dict[str, str] | None = None) -> PortalServer:
    """`far-mesh portal` in a subprocess on a free loopback port, once its /health answers."""
    port = free_port()
    domain = f"127.0.0.1:{port}"
    env = (
        dict(os.environ)
        | {
            "POSTGRES_URL": dsn,
            "REDIS_URL": redis_url,
            "PORTAL_HOST": "127.0.0.1",
            "PORTAL_PORT": str(port),
            "PORTAL_DOMAIN": domain,
            "PORTAL_CHAIN_ID": "31337",
            "PORTAL_SECRET_KEY": secrets.token_urlsafe(32),
            "PORTAL_SECURE_COOKIES": "false",
            "LOG_LEVEL": "WARNING",
        }
        | (extra_env or {})
    )
    process = subprocess.Popen([sys.executable, "-m", "cli", "portal"], env=env, cwd=REPO_ROOT)
    url = f"http://{domain}"
    if serves(f"{url}/health", process, timeout_s=30):
        return PortalServer(url, domain, process)
    process.kill()
    raise RuntimeError(f"the portal did not start (exit status {process.poll()})")


def stop_portal(server: PortalServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
