"""The HTTP clients the harness makes: waiting for a process to serve, and talking to the system under test.

An httpx client builds a TLS context when it is made, loading the CA bundle, even for a plain-http loopback URL:
about 60 ms of CPU on the project's 2-core machines, 1 ms with a context made once (`tls_context`). `httpx.get`
makes a client per call, so a loop of them polling a worker that took a minute to start on a busy machine spent
some 20 CPU-seconds doing nothing else, and the check before every end-to-end test, one client per process of
the system, as much again over a run.
"""

import functools
import ssl
import subprocess
import time
from typing import Any

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's own default context, made once per process and shared by every client made here."""
    return httpx.create_ssl_context()


def serves(url: str, process: "subprocess.Popen[Any]", timeout_s: float, interval_s: float = 0.1) -> bool:
    """Whether `url` answered 200 before `process` exited and within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0, verify=tls_context()) as client:
        while process.poll() is None:
            try:
                if client.get(url).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(interval_s)
    return False
