"""Least privilege in the deployment: each process holds only the credentials and network paths it uses.

Workers face the untrusted swarm and get no ledger URL; the gateway faces the internet and connects as a login
of `far_mesh_gateway` (schema/0011), which may read API keys and whether a request id was used, nothing else;
`/metrics` is not served on the public port; every component has a NetworkPolicy. The manifests are checked as
rendered, the role against a real PostgreSQL, and the gateway's metrics port on a real gateway process.
"""

import inspect
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from gateway.api_keys import KeyStore, create_key
from mesh.ports import free_port
from tests.deploy.manifests import REPO, all_containers, objects, one, pod_labels, workloads
from tests.fixtures.deploy import KUSTOMIZATIONS
from tests.fixtures.gateway import WALLET, start_gateway, stop_gateway

Docs = dict[str, list[dict[str, Any]]]
Secrets = dict[str, dict[str, Any]]

SECRETS_READ = {
    ("far-mesh-gateway", "gateway"): {("far-mesh-redis", "REDIS_URL"), ("far-mesh-gateway-ledger", "POSTGRES_URL")},
    ("far-mesh-gateway", "wait-for-migrations"): {("far-mesh-gateway-ledger", "POSTGRES_URL")},
    ("far-mesh-worker", "worker"): {
        ("far-mesh-redis", "REDIS_URL"),
        ("far-mesh-dht", "peer-id"),
        ("far-mesh-huggingface", "HUGGING_FACE_HUB_TOKEN"),
        ("far-mesh-verification", "WORKER_VERIFY_SAMPLING_SECRET"),
    },
    ("far-mesh-accounting", "migrate"): {("far-mesh-ledger", "POSTGRES_URL")},
    ("far-mesh-accounting", "accounting"): {("far-mesh-redis", "REDIS_URL"), ("far-mesh-ledger", "POSTGRES_URL")},
    ("far-mesh-dht", "dht"): {("far-mesh-dht", "identity.key"), ("far-mesh-dht", "peer-id")},
    ("far-mesh-portal", "portal"): {
        ("far-mesh-redis", "REDIS_URL"),
        ("far-mesh-portal-ledger", "POSTGRES_URL"),
        ("far-mesh-portal", "PORTAL_SECRET_KEY"),
    },
    ("far-mesh-verifier", "verifier"): {
        ("far-mesh-redis", "REDIS_URL"),
        ("far-mesh-ledger", "POSTGRES_URL"),
        ("far-mesh-huggingface", "HUGGING_FACE_HUB_TOKEN"),
    },
    ("far-mesh-deposits", "deposits"): {
        ("far-mesh-ledger", "POSTGRES_URL"),
        ("far-mesh-chain", "CHAIN_RPC_URL"),
    },
    ("far-mesh-ledger-reconcile", "ledger"): {
        ("far-mesh-ledger", "POSTGRES_URL"),
        ("far-mesh-chain", "CHAIN_RPC_URL"),
    },
    ("far-mesh-payouts", "payouts"): {
        ("far-mesh-ledger", "POSTGRES_URL"),
        ("far-mesh-chain", "CHAIN_RPC_URL"),
        ("far-mesh-treasury", "treasury.key"),
    },
    **{
        (workload, "wait-for-migrations"): {("far-mesh-ledger", "POSTGRES_URL")}
        for workload in ("far-mesh-payouts", "far-mesh-deposits", "far-mesh-ledger-reconcile", "far-mesh-verifier")
    },
}
"""Every (Secret, key) each container can read, by env, envFrom or volume; anything more fails."""
GATEWAY_ROLE = "far_mesh_gateway"
GATEWAY_READS = {
    "far_api_keys": None,
    "schema_migrations": None,
    "far_mesh_sessions": {"request_id", "api_key_id", "model_id", "started_at", "tokens_generated", "total_cost_far"},
    "far_journal_lines": {"account", "amount_far"},
}
"""What far_mesh_gateway may SELECT: whole tables (None) or only the named columns."""
LIGHT_GATEWAY_MODULES = [p for p in (REPO / "gateway").glob("*.py") if p.name != "commands.py"]
"""The gateway process's code; `commands.py` is `far-mesh keys`, an operator command run with the owner's URL."""


def secrets_read(workload: dict[str, Any], container: dict[str, Any]) -> set[tuple[str, str]]:
    read: set[tuple[str, str]] = set()
    for source in container.get("envFrom", []):
        assert "secretRef" not in source, f"{container['name']} takes a whole Secret: name each key it needs"
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            read.add((ref["name"], ref["key"]))
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    for volume in workload["spec"]["template"]["spec"].get("volumes", []):
        if "secret" in volume and volume["name"] in mounted:
            read |= {(volume["secret"]["secretName"], item["key"]) for item in volume["secret"]["items"]}
    return read


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_container_reads_exactly_the_secret_keys_it_needs(rendered: Docs, kustomization: str) -> None:
    for workload in workloads(rendered[kustomization]):
        for container in all_containers(workload):
            key = (workload["metadata"]["name"], container["name"])
            assert secrets_read(workload, container) == SECRETS_READ[key], key


def test_workers_facing_the_swarm_get_no_ledger_url_and_cannot_reach_postgres(
    rendered: Docs, secret_template: Secrets
) -> None:
    docs = rendered["overlays/production"]
    worker = one(docs, "Deployment", "far-mesh-worker")
    for container in all_containers(worker):
        names = {v["name"] for v in container.get("env", [])}
        assert "POSTGRES_URL" not in names and not {n for n, _ in secrets_read(worker, container)} & {
            "far-mesh-ledger",
            "far-mesh-gateway-ledger",
        }
    postgres_port = urlsplit(secret_template["far-mesh-ledger"]["stringData"]["POSTGRES_URL"]).port
    for name in ("far-mesh-worker", "far-mesh-dht"):
        policy = one(docs, "NetworkPolicy", name)
        for rule in policy["spec"]["egress"]:
            assert "to" not in rule or rule["to"], "an empty `to` would allow everything"
            for port in rule["ports"]:
                low, high = port["port"], port.get("endPort", port["port"])
                assert not low <= postgres_port <= high, f"{name} may reach PostgreSQL's port {postgres_port}"


def test_the_gateway_connects_with_its_own_login_not_the_owners(secret_template: Secrets) -> None:
    owner = urlsplit(secret_template["far-mesh-ledger"]["stringData"]["POSTGRES_URL"])
    gateway = urlsplit(secret_template["far-mesh-gateway-ledger"]["stringData"]["POSTGRES_URL"])
    assert gateway.username != owner.username
    assert (gateway.hostname, gateway.port, gateway.path) == (owner.hostname, owner.port, owner.path)
    readme = (REPO / "deploy" / "README.md").read_text()
    assert f"IN ROLE {GATEWAY_ROLE}" in readme and gateway.username in readme


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_metrics_are_not_served_on_the_public_port(rendered: Docs, kustomization: str) -> None:
    docs = rendered[kustomization]
    gateway = one(docs, "Deployment", "far-mesh-gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]}
    config = one(docs, "ConfigMap", next(c for c in _config_maps(gateway) if "gateway" in c))["data"]
    assert int(config["GATEWAY_METRICS_PORT"]) == ports["metrics"] != int(config["GATEWAY_PORT"]) == ports["http"]
    service = one(docs, "Service", "far-mesh-gateway")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    # Every metrics port admits only the monitoring namespace; only the gateway's http port is open to all.
    for policy in objects(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            open_to_all = "from" not in rule
            for port in rule["ports"]:
                assert port["port"] != "metrics" or not open_to_all, policy["metadata"]["name"]
                if open_to_all:
                    assert port["port"] in ("http", "dht"), policy["metadata"]["name"]  # gateway, portal, dht


def _config_maps(workload: dict[str, Any]) -> list[str]:
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return [s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_component_dials_only_the_stores_it_uses(
    rendered: Docs, kustomization: str, secret_template: Secrets
) -> None:
    docs = rendered[kustomization]
    redis = urlsplit(secret_template["far-mesh-redis"]["stringData"]["REDIS_URL"]).port
    postgres = urlsplit(secret_template["far-mesh-ledger"]["stringData"]["POSTGRES_URL"]).port
    expected = {name: {53, redis, postgres} for name in ("far-mesh-gateway", "far-mesh-accounting", "far-mesh-portal")}
    # No Redis: the payer, the deposit watcher and the reconciliation read the ledger and the chain only.
    for name in ("far-mesh-payouts", "far-mesh-deposits", "far-mesh-ledger-reconcile"):
        expected[name] = {53, postgres, rpc_port(secret_template)}
    expected["far-mesh-verifier"] = {53, redis, postgres, 443}  # 443: the models' weights from the Hub
    for name, ports in expected.items():
        policy = one(docs, "NetworkPolicy", name)
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(one(docs, "Deployment", name)).items()
        allowed = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert allowed == ports and all("endPort" not in p for r in policy["spec"]["egress"] for p in r["ports"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_deployment_has_a_policy_of_its_own_beside_the_default_deny(rendered: Docs, kustomization: str) -> None:
    """Under the namespace's default deny, a pod no policy of its own selects can dial nothing: the verifier once
    reached neither Redis nor PostgreSQL."""
    docs = rendered[kustomization]
    policies = [p for p in objects(docs, "NetworkPolicy") if p["spec"]["podSelector"]]
    for deployment in objects(docs, "Deployment"):
        labels = pod_labels(deployment)
        mine = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert len(mine) == 1, deployment["metadata"]["name"]


def rpc_port(secret_template: Secrets) -> int:
    """The port of the template's CHAIN_RPC_URL (443 or 80 when the URL names none)."""
    url = urlsplit(secret_template["far-mesh-chain"]["stringData"]["CHAIN_RPC_URL"])
    return url.port or {"https": 443, "http": 80}[url.scheme]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_only_the_payer_holds_the_treasury_key_and_only_as_a_read_only_file(rendered: Docs, kustomization: str) -> None:
    docs = rendered[kustomization]
    holders = [
        (w["metadata"]["name"], c["name"])
        for w in workloads(docs)
        for c in all_containers(w)
        if any(secret == "far-mesh-treasury" for secret, _ in secrets_read(w, c))
    ]
    assert holders == [("far-mesh-payouts", "payouts")]
    payer = one(docs, "Deployment", "far-mesh-payouts")
    [container] = [c for c in all_containers(payer) if c["name"] == "payouts"]
    assert "PAYOUT_TREASURY_KEY" not in {v["name"] for v in container.get("env", [])}, "never in the environment"
    config = one(docs, "ConfigMap", next(c for c in _config_maps(payer) if "payouts" in c))["data"]
    key_file = config["PAYOUT_TREASURY_KEY_FILE"]
    [volume] = [v for v in payer["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and key_file.startswith(mount["mountPath"] + "/")
    assert [item["path"] for item in volume["secret"]["items"]] == [key_file.rsplit("/", 1)[1]]
    assert volume["secret"]["defaultMode"] == 0o400


# --- the far_mesh_gateway role, against a real PostgreSQL ---------------------------------------------------


@pytest.fixture(scope="session")
def gateway_login_dsn(migrated_postgres_dsn: str) -> Iterator[str]:
    """A login in far_mesh_gateway, as deploy/README.md has operators create it; dropped at the end."""
    import asyncio

    login = f"far_mesh_gateway_test_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(migrated_postgres_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f"CREATE ROLE {login} LOGIN PASSWORD '{password}' IN ROLE {GATEWAY_ROLE}"))
    parts = urlsplit(migrated_postgres_dsn)
    host = parts.netloc.rpartition("@")[2]
    yield urlunsplit(parts._replace(netloc=f"{login}:{password}@{host}"))
    asyncio.run(run(f"DROP ROLE {login}"))


@pytest.fixture
async def owner(migrated_postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated_postgres_dsn)
    yield connection
    await connection.close()


async def test_the_gateway_role_cannot_log_in_and_holds_no_power(owner: asyncpg.Connection) -> None:
    role = await owner.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", GATEWAY_ROLE)
    assert role is not None
    assert not any(role[f] for f in ("rolcanlogin", "rolsuper", "rolcreaterole", "rolcreatedb", "rolbypassrls"))


async def test_the_gateway_role_may_read_what_the_gateway_reads_and_write_nothing(owner: asyncpg.Connection) -> None:
    tables = [
        r["relname"]
        for r in await owner.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p')"
        )
    ]
    assert set(GATEWAY_READS) <= set(tables)
    for table in tables:
        for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
            assert not await owner.fetchval("SELECT has_table_privilege($1, $2, $3)", GATEWAY_ROLE, table, privilege)
        whole = await owner.fetchval("SELECT has_table_privilege($1, $2, 'SELECT')", GATEWAY_ROLE, table)
        assert whole == (table in GATEWAY_READS and GATEWAY_READS[table] is None), table
        columns = GATEWAY_READS.get(table) or set()
        for column in [
            r["attname"]
            for r in await owner.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
                table,
            )
        ]:
            readable = await owner.fetchval(
                "SELECT has_column_privilege($1, $2, $3, 'SELECT')", GATEWAY_ROLE, table, column
            )
            assert readable == (whole or column in columns), f"{table}.{column}"
    assert not await owner.fetchval("SELECT has_schema_privilege($1, current_schema(), 'CREATE')", GATEWAY_ROLE)


def test_every_table_the_gateways_code_queries_is_granted_to_its_role() -> None:
    # A new query in the gateway that reads another table must come with its grant (a new migration), or it
    # fails with "permission denied" in production only.
    sql = " ".join(p.read_text() for p in LIGHT_GATEWAY_MODULES)
    named = set(re.findall(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+([a-z_][a-z0-9_]*)", sql))
    writes = set(re.findall(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+([a-z_][a-z0-9_]*)", sql))
    ledger_tables = {name for name in named if name.startswith(("far_", "schema_"))}
    assert "far_api_keys" in ledger_tables
    assert ledger_tables <= set(GATEWAY_READS), f"the gateway queries {sorted(ledger_tables - set(GATEWAY_READS))}"
    # Writing keys is `far-mesh keys`' job (gateway/commands.py, the owner's URL): the app itself writes nothing.
    key_writes = {"far_api_keys"}
    assert writes <= key_writes, f"the gateway writes {sorted(writes - key_writes)}, which its role may not"


async def test_the_gateway_role_verifies_keys_but_cannot_issue_or_revoke_them(
    owner: asyncpg.Connection, gateway_login_dsn: str
) -> None:
    issued = await create_key(owner, WALLET, "least-privilege")
    pool = await asyncpg.create_pool(gateway_login_dsn, min_size=0, max_size=1)
    try:
        limits: dict[str, Any] = {"timeout_s": 5.0} if "timeout_s" in inspect.signature(KeyStore).parameters else {}
        store = KeyStore(pool, cache_s=0, **limits)
        assert (await store.verify(issued.secret_key)) == issued.key
        async with pool.acquire() as connection:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await create_key(connection, WALLET, "forged")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(
                    "UPDATE far_api_keys SET revoked_at = now() WHERE key_id = $1", issued.key.key_id
                )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.fetch("SELECT user_wallet, total_cost_far FROM far_mesh_sessions LIMIT 1")
            assert (
                await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM far_mesh_sessions WHERE request_id = $1)", "none"
                )
                is False
            )
    finally:
        await pool.close()


async def test_the_role_migration_is_idempotent(owner: asyncpg.Connection) -> None:
    sql = (REPO / "schema" / "0011_gateway_role.sql").read_text()
    await owner.execute(sql)
    await owner.execute(sql)
    assert await owner.fetchval("SELECT has_table_privilege($1, 'far_api_keys', 'SELECT')", GATEWAY_ROLE)


# --- the gateway process: metrics on their own port, keys read as far_mesh_gateway --------------------------


def test_a_gateway_serves_metrics_only_on_its_metrics_port_and_runs_as_far_mesh_gateway(
    gateway_env: dict[str, str], gateway_login_dsn: str, migrated_postgres_dsn: str, tmp_path: Path
) -> None:
    import asyncio

    async def issue() -> str:
        connection = await asyncpg.connect(migrated_postgres_dsn)
        try:
            return (await create_key(connection, WALLET, "metrics-port")).secret_key
        finally:
            await connection.close()

    key = asyncio.run(issue())
    metrics_port = free_port()
    env = {**gateway_env, "POSTGRES_URL": gateway_login_dsn, "GATEWAY_METRICS_PORT": str(metrics_port)}
    process, url = start_gateway(env, tmp_path / "gateway.log")
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/metrics").status_code == 404
            assert "/metrics" not in client.get("/openapi.json").json()["paths"]
            unknown = client.get("/inference/req_nobody/stream", headers={"Authorization": f"Bearer {key}"})
            assert unknown.status_code == 404, unknown.text  # the key was read as far_mesh_gateway and accepted
            bad = client.get("/inference/req_nobody/stream", headers={"Authorization": "Bearer fmk_0_x"})
            assert bad.status_code == 401
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scraped.status_code == 200
        assert 'far_gateway_requests_total{route="/inference/{request_id}/stream",status="404"}' in scraped.text
    finally:
        stop_gateway(process)
