"""`far-mesh dev` runs the portal beside the gateway: on its own port, bound to loopback, with a fresh cookie key
per run, the local swarm's initial peers in its onboarding command, and sign-in messages naming its address."""

import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack.system import LocalSystem, SystemPlan
from mesh.ports import free_port, port_or_free
from portal.settings import PortalSettings
from protocol.catalog import ModelSpec
from tests.fixtures.system import SystemUnderTest

PEERS = ("/ip4/127.0.0.1/tcp/4001/p2p/QmYY6kpyEuikpQSwe6ENjMRbDBBKhSQoCmFL2Au9E5fN7S",)
A_WALLET = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


@dataclass
class _Service:
    url: str


@dataclass
class _Swarm:
    initial_peers: tuple[str, ...]


def _prepared(tmp_path: Path, portal_port: int = 8200) -> LocalSystem:
    """A LocalSystem as it stands once its servers and swarm are up, without starting them."""
    system = LocalSystem(SystemPlan(state_dir=tmp_path, cache_dir=tmp_path, portal_port=portal_port))
    system.redis = _Service("redis://127.0.0.1:6390/0")  # type: ignore[assignment]
    system.postgres = _Service("postgresql://far_mesh@127.0.0.1:5439/far_mesh")  # type: ignore[assignment]
    system.swarm = _Swarm(PEERS)  # type: ignore[assignment]
    system.models = (ModelSpec(model_id="far-tiny-llama-4"),)
    return system


def test_the_portal_process_gets_settings_it_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _prepared(tmp_path, portal_port=8211)._env_for("portal")
    for name in PortalSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = PortalSettings.from_env()
    assert settings.portal_port == 8211
    assert settings.portal_host == "127.0.0.1"  # plain HTTP and a non-Secure cookie: loopback only
    assert settings.portal_domain == "127.0.0.1:8211"
    assert settings.portal_secure_cookies is False
    assert settings.portal_initial_peers == ",".join(PEERS)
    assert str(settings.redis_url) == env["REDIS_URL"] and settings.postgres_url == env["POSTGRES_URL"]


def test_each_run_has_its_own_portal_secret_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    first, second = _prepared(tmp_path), _prepared(tmp_path)
    key = first._env_for("portal")["PORTAL_SECRET_KEY"]
    assert len(key) >= 32
    assert first._env_for("portal")["PORTAL_SECRET_KEY"] == key  # a restarted portal keeps its sessions
    assert second._env_for("portal")["PORTAL_SECRET_KEY"] != key


def test_only_the_portal_is_given_the_portal_settings(tmp_path: Path) -> None:
    system = _prepared(tmp_path)
    for name in ("web", "accounting", "worker.1"):
        assert not {k for k in system._env_for(name) if k.startswith("PORTAL_")} - set(system.plan.env), name


def test_gateway_replicas_each_listen_on_a_port_of_their_own_and_make_run_keeps_one(tmp_path: Path) -> None:
    assert _prepared(tmp_path).gateway_names == ("web",)
    system = LocalSystem(SystemPlan(state_dir=tmp_path, cache_dir=tmp_path, gateway_port=8111, gateways=2))
    prepared = _prepared(tmp_path)
    system.redis, system.postgres, system.swarm, system.models = (
        prepared.redis,
        prepared.postgres,
        prepared.swarm,
        prepared.models,
    )
    assert system.gateway_names == ("web", "web.2")
    first, second = (int(system._env_for(name)["GATEWAY_PORT"]) for name in system.gateway_names)
    assert first == 8111 and second != first
    assert system.gateway_urls == ("http://127.0.0.1:8111", f"http://127.0.0.1:{second}")
    assert system._env_for("web.2")["REDIS_URL"] == system._env_for("web")["REDIS_URL"]  # one Redis, one ledger
    assert system._env_for("web.2")["POSTGRES_URL"] == system._env_for("web")["POSTGRES_URL"]


def test_the_portal_port_is_the_preferred_one_unless_something_listens_there() -> None:
    port = free_port()
    assert port_or_free(port) == port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        other = port_or_free(port)
        assert other != port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", other))


@pytest.mark.e2e
def test_the_whole_system_serves_the_portal_on_its_url(e2e_system: SystemUnderTest) -> None:
    system = e2e_system.system
    assert system.process("portal").process.poll() is None
    port = system.plan.portal_port
    assert system.portal_url == f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=system.portal_url, timeout=10) as client:
        assert client.get("/health").json() == {"status": "ok"}
        onboarding = client.get("/api/onboarding").json()
        assert system.swarm is not None
        assert all(peer in onboarding["command"] for peer in system.swarm.initial_peers)
        assert {m.model_id for m in e2e_system.models} <= set(onboarding["models"])
        message = client.post("/api/siwe/message", json={"address": A_WALLET})
        assert message.status_code == 200, message.text
        assert f"127.0.0.1:{port} wants you to sign in" in message.text


def test_make_run_starts_the_verifier_with_settings_it_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a verifier no sampled session is checked (so none is paid), and no cheat is ever caught."""
    from devstack.procfile import commands_for
    from devstack.system import REPO_ROOT, SERVICES
    from verifier.settings import VerifierSettings

    assert "verifier" in SERVICES
    assert commands_for(REPO_ROOT / "Procfile", list(SERVICES))["verifier"] == ["far-mesh", "verifier"]
    env = _prepared(tmp_path)._env_for("verifier")
    for name in VerifierSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = VerifierSettings.from_env()
    assert settings.verifier_metrics_port not in (0, 9104)  # a port of its own beside the other processes
    assert [m.model_id for m in settings.catalog.models] == ["far-tiny-llama-4"]


def test_make_run_starts_the_deposit_watcher_and_the_reconciliation_with_settings_they_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a chain, buyers' deposits are credited and the books reconciled; neither process gets the treasury key,
    and the gateway holds requests against prepaid balances (the development buyer's is funded)."""
    from accounting.chain_settings import DepositSettings, ReconcileSettings
    from devstack.chain_node import DevChain
    from devstack.procfile import commands_for
    from devstack.system import CHAIN_PROCESSES, REPO_ROOT
    from gateway.settings import GatewaySettings

    assert commands_for(REPO_ROOT / "Procfile", list(CHAIN_PROCESSES)) == {
        "payouts": ["far-mesh", "payouts", "serve"],
        "deposits": ["far-mesh", "deposits", "watch"],
        "ledger": ["far-mesh", "ledger", "serve"],
    }
    system = _prepared(tmp_path)
    chain_env = {
        "CHAIN_RPC_URL": "http://127.0.0.1:8545",
        "CHAIN_ID": "31337",
        "CHAIN_TOKEN_ADDRESS": "0x" + "11" * 20,
        "DEPOSIT_CONTRACT_ADDRESS": "0x" + "22" * 20,
        "DEPOSIT_CONFIRMATIONS": "2",
        "PAYOUT_TREASURY_KEY_FILE": str(tmp_path / "treasury.key"),
    }
    system.chain = DevChain(_Service("http://127.0.0.1:8545"), chain_env, (), "0x" + "33" * 20)  # type: ignore[arg-type]
    ports = set()
    for name, cls in (("deposits", DepositSettings), ("ledger", ReconcileSettings), ("web", GatewaySettings)):
        env = system._env_for(name)
        assert "PAYOUT_TREASURY_KEY_FILE" not in env, name
        for field in cls.model_fields:
            monkeypatch.delenv(field.upper(), raising=False)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = cls.from_env()
        if isinstance(settings, ReconcileSettings):
            ports.add(settings.ledger_metrics_port)
            assert settings.deposit_contract_address == chain_env["DEPOSIT_CONTRACT_ADDRESS"]
        elif isinstance(settings, DepositSettings):
            ports.add(settings.deposit_metrics_port)
            assert settings.deposit_confirmations == 2
        else:
            assert settings.gateway_require_prepaid_balance is True
    assert not ports & {0, 9105, 9106}  # ports of their own beside the other processes
