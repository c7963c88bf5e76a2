"""Payouts on chain: gas per paid wallet through the batch contract vs one ERC-20 transfer per wallet, and
wallets paid per second end to end (ledger claim -> signed, committed -> mined -> confirmed -> rows paid)
vs sending and confirming one plain transfer per wallet. The wallets paid end to end are registered owners of
their nodes (payouts pay registered wallets only), so the claim's join with the registrations is in the timing.
Last, the claim alone on a larger ledger, as it is (joined with the registrations), through the per-row
far_registered_wallet() function, and the old claim of the announced wallet (the baseline).

Runs on a private ganache (a block per transaction) and a throwaway database on the machine's PostgreSQL
(TEST_POSTGRES_URL, else 127.0.0.1:5432):

    .venv/bin/python bench/bench_payouts.py [--wallets 1000] [--batch 200] [--claim-rows 200000]
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
from pydantic import SecretStr
from web3 import Web3

from accounting.batch_writer import write_batch
from chain.deploy import deploy, send, transfer
from chain.node import LocalChain, dev_account
from chain.transfers import Payment, pay_batch_data
from chain.units import to_base_units
from devstack.harness.interrupts import interrupt_on_signals
from devstack.postgres_server import create_database_if_missing, drop_database
from devstack.services import with_database
from mesh.ports import free_port
from payouts.batches import LOCK_OWED_ROWS
from payouts.payable import PayoutHold
from payouts.payer import ChainPayer
from payouts.settings import PayoutSettings
from protocol.money import cost_of, split_payment
from protocol.usage import NodeContribution, UsageRecord
from protocol.wallet import to_checksum_address
from schema.migrate import apply_migrations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for devstack.harness
from devstack.harness.registrations import register_nodes  # noqa: E402

ADMIN_DSN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SUPPLY_FAR = Decimal(10**9)


def fresh_wallets(count: int, salt: str) -> list[str]:
    return [
        to_checksum_address("0x" + uuid.uuid5(uuid.NAMESPACE_OID, f"{salt}-{i}").hex + "00000000") for i in range(count)
    ]


def gas_per_wallet(w3: Web3, token: str, batch_contract: str, count: int) -> tuple[float, float]:
    """(gas per wallet through payBatch, gas per plain transfer), each paying `count` wallets never paid before."""
    treasury = dev_account(1)
    batch = send(
        w3,
        treasury,
        {
            "to": batch_contract,
            "data": pay_batch_data(token, [Payment(w, 10**18) for w in fresh_wallets(count, "batch")]),
        },
    )
    singles = [transfer(w3, treasury, token, w, 10**18)["gasUsed"] for w in fresh_wallets(count, "single")]
    return batch["gasUsed"] / count, sum(singles) / count


def usage_records(wallet_by_node: dict[str, str]) -> list[UsageRecord]:
    """One session per 20 nodes, each node (announcing its wallet) paid a share with all 18 decimals in use."""
    from datetime import UTC, datetime, timedelta

    records = []
    started = datetime(2026, 1, 1, tzinfo=UTC)
    nodes = list(wallet_by_node)
    for start in range(0, len(nodes), 20):
        group = nodes[start : start + 20]
        work = {node: 1 + i for i, node in enumerate(group)}
        cost = cost_of(97, Decimal("0.0123456789"))
        payments, remainder = split_payment(cost, work)
        records.append(
            UsageRecord(
                request_id=f"bench-{uuid.uuid4().hex[:16]}",
                model_id="bench/model",
                status="completed",
                finish_reason="length",
                prompt_tokens=3,
                tokens_generated=97,
                price_per_token_far=Decimal("0.0123456789"),
                total_cost_far=cost,
                platform_remainder_far=remainder,
                started_at=started,
                finished_at=started + timedelta(seconds=1),
                time_to_first_token_ms=10.0,
                worker_id="bench",
                contributions=tuple(
                    NodeContribution(
                        node_id=node,
                        wallet=wallet_by_node[node],
                        blocks_served=2,
                        tokens_contributed=100,
                        work_units=units,
                        payment_far=payments[node],
                    )
                    for node, units in work.items()
                ),
            )
        )
    return records


async def chain_payer_wallets_per_s(
    dsn: str, url: str, token: str, batch_contract: str, args: argparse.Namespace
) -> float:
    nodes = [f"bench-node-{i}" for i in range(args.wallets)]
    connection = await asyncpg.connect(dsn)
    try:
        # payouts pay registered wallets only: each node is registered, with a signed statement, to the wallet it
        # announces (before the clock starts; the claim's lookup of each row's registration is timed)
        wallet_by_node = await register_nodes(connection, nodes)
        records = usage_records(wallet_by_node)
        for start in range(0, len(records), 100):
            await write_batch(connection, records[start : start + 100])
        settings = PayoutSettings.from_env(
            postgres_url=dsn,
            chain_rpc_url=url,
            chain_token_address=token,
            chain_batch_contract_address=batch_contract,
            payout_treasury_key=SecretStr(dev_account(1).key.to_0x_hex()),
            payout_confirmations=1,
            payout_poll_s=0.02,
            payout_max_wallets=args.batch,
        )
        payer = await ChainPayer.connect(settings)
        began = time.perf_counter()
        while settled := await payer.run_once(connection, min_far=Decimal(0)):
            assert all(s.status == "paid" for s in settled), settled
        elapsed = time.perf_counter() - began
        paid = await connection.fetch(
            "SELECT far_registered_wallet(node_id) AS wallet, sum(paid_far) AS paid FROM node_earnings_summary "
            "GROUP BY 1"
        )
        w3 = Web3(Web3.HTTPProvider(url))
        contract = w3.eth.contract(address=Web3.to_checksum_address(token), abi=_token_abi())
        for row in paid[:50]:  # spot check: on chain exactly what the ledger says
            assert contract.functions.balanceOf(row["wallet"]).call() == to_base_units(row["paid"])
        assert len(paid) == len(nodes)
        return len(nodes) / elapsed
    finally:
        await connection.close()


def _token_abi() -> list[dict[str, object]]:
    from chain.artifacts import load_artifact

    return load_artifact("FarToken").abi


def one_transfer_per_wallet_per_s(w3: Web3, token: str, count: int) -> float:
    """The baseline: sign, send and wait for one plain transfer per wallet, one after the other."""
    treasury = dev_account(1)
    wallets = fresh_wallets(count, "baseline")
    began = time.perf_counter()
    for wallet in wallets:
        transfer(w3, treasury, token, wallet, 10**18)
    return count / (time.perf_counter() - began)


def claim_query(payable_rows: str, payee: str, lock: str) -> str:
    """payouts.batches' claim with the payable rows, payee expression and lock given."""
    claimable = f"c.paid_at IS NULL AND c.payment_batch_id IS NULL AND c.payment_far > 0 AND {payee} IS NOT NULL"
    return (
        f"WITH owed AS (SELECT {payee} AS payee FROM {payable_rows} WHERE {claimable} "
        "GROUP BY 1 HAVING sum(c.payment_far) >= $1 ORDER BY 1 LIMIT $2) "
        f"SELECT c.id, {payee} AS payee, c.payment_far FROM {payable_rows} "
        f"WHERE {claimable} AND {payee} IN (SELECT payee FROM owed) ORDER BY c.id {lock}"
    )


async def claim_ms(dsn: str, args: argparse.Namespace) -> dict[str, float]:
    """Best of three claims of `--batch` wallets on a ledger of `--claim-rows` unpaid rows of `--claim-nodes`
    registered nodes (seeded in SQL, triggers off): the claim as it is, the same payee through
    far_registered_wallet(), and the old claim of the announced wallet (the baseline). They only lock rows."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SET session_replication_role = replica")  # seeding only: no rollup triggers
        await connection.execute(
            "INSERT INTO far_mesh_sessions (request_id, model_id, status, finish_reason, prompt_tokens, "
            "tokens_generated, price_per_token_far, total_cost_far, platform_remainder_far, started_at, finished_at, "
            "worker_id) SELECT 'claim-' || g, 'bench/model', 'completed', 'length', 1, 1, 0.1, 0.1, 0, "
            # finished before the payout hold's reserve is released, so every row is payable (payouts.payable)
            "now() - interval '8 days', now() - interval '8 days', "
            "'bench' FROM generate_series(1, $1) g",
            args.claim_rows,
        )
        await connection.execute(
            "INSERT INTO far_session_contributions (session_id, node_id, wallet, blocks_served, tokens_contributed, "
            "work_units, payment_far) SELECT s.id, 'claim-node-' || n, '0x' || lpad(to_hex(n), 40, '0'), 1, 1, 1, 0.1 "
            "FROM far_mesh_sessions s, LATERAL (SELECT substr(s.request_id, 7)::int % $1 AS n) k "
            "WHERE s.request_id LIKE 'claim-%'",
            args.claim_nodes,
        )
        await connection.execute(
            "INSERT INTO far_node_registrations (node_id, wallet, statement, signature) "
            "SELECT 'claim-node-' || g, '0x' || lpad(to_hex(g), 40, '0'), 'bench', '0x' || repeat('ab', 65) "
            "FROM generate_series(0, $1 - 1) g",
            args.claim_nodes,
        )
        await connection.execute("SET session_replication_role = origin")
        await connection.execute("ANALYZE far_session_contributions, far_node_registrations")
        table, lock = "far_session_contributions c", "FOR UPDATE OF c SKIP LOCKED"
        variants = {
            "registered, joined (the claim)": LOCK_OWED_ROWS,
            "registered, far_registered_wallet()": claim_query(table, "far_registered_wallet(c.node_id)", lock),
            "announced c.wallet (baseline)": claim_query(table, "c.wallet", lock),
        }
        best: dict[str, float] = {}
        for name, sql in variants.items():
            for _ in range(3):
                async with connection.transaction():
                    began = time.perf_counter()
                    hold = PayoutHold().parameters() if sql is LOCK_OWED_ROWS else ()
                    rows = await connection.fetch(sql, Decimal(0), args.batch, *hold)
                    elapsed_ms = (time.perf_counter() - began) * 1000
                assert len({r["payee"] for r in rows}) == args.batch
                best[name] = min(best.get(name, float("inf")), elapsed_ms)
        return best
    finally:
        await connection.close()


async def main(args: argparse.Namespace) -> None:
    print("load average at start: {:.2f} {:.2f} {:.2f} (2 cores shared with other work)".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        node = LocalChain(free_port(), Path(tmp) / "ganache.log")
        node.start()
        name = f"far_mesh_bench_payouts_{uuid.uuid4().hex[:8]}"
        await create_database_if_missing(ADMIN_DSN, name)
        dsn = with_database(ADMIN_DSN, name)
        try:
            await apply_migrations(dsn)
            w3 = Web3(Web3.HTTPProvider(node.url))
            d = deploy(w3, dev_account(0), dev_account(1), supply_far=SUPPLY_FAR)
            batch_gas, single_gas = gas_per_wallet(w3, d.token, d.batch_contract, args.batch)
            print(
                f"gas per paid wallet ({args.batch} new wallets): batch contract {batch_gas:,.0f}, "
                f"one ERC-20 transfer each {single_gas:,.0f} -> ratio {batch_gas / single_gas:.2f}x (target <= 0.60x)"
            )
            base = one_transfer_per_wallet_per_s(w3, d.token, args.baseline_wallets)
            rate = await chain_payer_wallets_per_s(dsn, node.url, d.token, d.batch_contract, args)
            print(
                f"end to end ({args.wallets} wallets, batches of {args.batch}, 1 confirmation): chain payer "
                f"{rate:,.0f} wallets/s; one transfer per wallet sent and confirmed in turn {base:,.0f} wallets/s "
                f"-> {rate / base:.1f}x"
            )
            claims = await claim_ms(dsn, args)
            baseline = claims["announced c.wallet (baseline)"]
            print(f"claim of {args.batch} wallets among {args.claim_rows:,} unpaid rows of {args.claim_nodes:,} nodes:")
            for variant, ms in claims.items():
                print(f"  {variant:38s} {ms:8.1f} ms -> {ms / baseline:.2f}x the announced-wallet claim")
        finally:
            node.stop()
            await drop_database(ADMIN_DSN, name)
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    interrupt_on_signals("bench_payouts")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wallets", type=int, default=1000, help="wallets owed, paid end to end by the chain payer")
    parser.add_argument("--batch", type=int, default=200, help="wallets per batch transaction")
    parser.add_argument("--baseline-wallets", type=int, default=200, help="wallets paid one transfer each (baseline)")
    parser.add_argument("--claim-rows", type=int, default=200_000, help="unpaid rows the claim measurement sees")
    parser.add_argument("--claim-nodes", type=int, default=5_000, help="registered nodes those rows belong to")
    asyncio.run(main(parser.parse_args()))
