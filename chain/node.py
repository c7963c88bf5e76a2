"""A local JSON-RPC EVM node for development, tests and benchmarks: ganache from `chain/node_modules`.

It listens on loopback only, with chain id 31337 and ganache's deterministic wallet, so the same accounts
and keys exist on every run (`dev_account(i)`); they are public test keys and must never hold real money.

Every fresh node is a chain of its own: ganache's genesis block depends only on its options and the second
it started, so two nodes started in the same second would share a genesis hash (what `chain.identity` tells
chains apart by). Each start passes a random `extraData`, which goes into the genesis block. A node kept in
`db_path` reloads its chain, genesis included, so it stays the same chain across restarts.
"""

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from chain.artifacts import CHAIN_DIR

GANACHE = CHAIN_DIR / "node_modules" / ".bin" / "ganache"
DEV_CHAIN_ID = 31337
DEV_MNEMONIC = "myth like bonus scare over problem client lizard pioneer submit female collect"
"""The mnemonic `ganache --wallet.deterministic` uses: public, for development only."""
DEV_ACCOUNTS = 40
DEV_BALANCE_ETH = 1000


class NodeNotInstalled(RuntimeError):
    """ganache is not installed: `make install` runs `npm ci` in chain/."""


@cache
def dev_account(index: int) -> LocalAccount:
    """The `index`-th account of the deterministic development wallet (funded with 1,000 ETH at genesis)."""
    Account.enable_unaudited_hdwallet_features()  # BIP-44 derivation of a public test mnemonic; no secret involved
    account: LocalAccount = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def rpc_call(url: str, method: str, params: list[Any] | None = None, *, timeout_s: float = 5.0) -> Any:
    """One JSON-RPC call with the standard library (for readiness checks and node control in tests)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def answers(url: str, timeout_s: float = 1.0) -> int | None:
    """The chain id of the node at `url`, or None when nothing answers there."""
    try:
        return int(rpc_call(url, "eth_chainId", timeout_s=timeout_s), 16)
    except (OSError, urllib.error.URLError, ValueError, RuntimeError):
        return None


@dataclass
class LocalChain:
    """A ganache process on 127.0.0.1:`port`; `start()` returns once it answers JSON-RPC, `stop()` ends it."""

    port: int
    log_path: Path
    block_time_s: float = 0
    """0: a block per transaction, at once (tests); >0: a block every so many seconds, empty ones too."""
    chain_id: int = DEV_CHAIN_ID
    db_path: Path | None = None
    """Where ganache keeps its chain, to reload it on the next start (None: in memory, gone when it stops)."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(GANACHE),
            "--server.host=127.0.0.1",
            f"--server.port={self.port}",
            f"--chain.chainId={self.chain_id}",
            f"--chain.networkId={self.chain_id}",
            "--wallet.deterministic",
            f"--wallet.totalAccounts={DEV_ACCOUNTS}",
            f"--wallet.defaultBalance={DEV_BALANCE_ETH}",
            f"--miner.blockTime={self.block_time_s:g}",
            f"--miner.extraData=0x{secrets.token_hex(32)}",  # a genesis of its own (ignored when reloading db_path)
            "--logging.quiet",
            *([f"--database.dbPath={self.db_path}"] if self.db_path is not None else []),
        ]

    def start(self, timeout_s: float = 60.0) -> None:
        if not GANACHE.exists():
            raise NodeNotInstalled(f"{GANACHE} is missing: run `npm ci` in {CHAIN_DIR} (make install does)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.db_path is not None:
            self.db_path.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while answers(self.url, timeout_s=0.5) != self.chain_id:
            if self.process.poll() is not None:
                raise RuntimeError(f"ganache exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"ganache did not answer on {self.url} within {timeout_s}s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
