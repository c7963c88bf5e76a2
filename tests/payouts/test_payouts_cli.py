"""`far-mesh payouts run --payer chain` and `payouts resolve --tx` against a real node: clear errors for a node
that is down, on another chain or without the contracts; a file batch paid only once its transaction checks out."""

import asyncio
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from accounting.batch_writer import write_batch
from chain.deploy import approve, send, transfer
from chain.node import DEV_CHAIN_ID
from chain.transfers import Payment, pay_batch_data
from cli.main import main
from devstack.harness.registrations import register_nodes
from mesh.ports import free_port
from payouts.batches import PaymentBatch, run_payout
from payouts.payer import FilePayer, payments_of
from tests.fixtures.chain import FarDeployment, fund_gas
from tests.fixtures.ledger import unique_id, usage_record


@pytest.fixture
def chain_env(
    monkeypatch: pytest.MonkeyPatch, far_deployment: FarDeployment, payouts_ledger_dsn: str, tmp_path: Path
) -> Path:
    """The payer's environment, the treasury key in a file as a mounted secret would be."""
    key_file = tmp_path / "treasury.key"
    key_file.write_text(far_deployment.treasury.key.to_0x_hex())
    monkeypatch.setenv("POSTGRES_URL", payouts_ledger_dsn)
    monkeypatch.setenv("CHAIN_RPC_URL", far_deployment.url)
    monkeypatch.setenv("CHAIN_TOKEN_ADDRESS", far_deployment.deployment.token)
    monkeypatch.setenv("CHAIN_BATCH_CONTRACT_ADDRESS", far_deployment.deployment.batch_contract)
    monkeypatch.setenv("PAYOUT_TREASURY_KEY_FILE", str(key_file))
    monkeypatch.setenv("PAYOUT_CONFIRMATIONS", "1")
    monkeypatch.setenv("PAYOUT_POLL_S", "0.05")
    return key_file


async def owe(db: asyncpg.Connection, peers: list[str] | None = None) -> None:
    peers = peers or [unique_id("peer") for _ in range(3)]
    await register_nodes(db, peers)
    await write_batch(db, [usage_record(unique_id("req"), {p: 1 + i for i, p in enumerate(peers)})])


async def far_mesh(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_payouts_run_with_the_chain_payer_pays_and_never_shows_the_key(
    payouts_db: asyncpg.Connection,
    far_deployment: FarDeployment,
    chain_env: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await owe(payouts_db)  # a few tokens' worth: below the policy's 1 FAR floor
    assert await far_mesh("payouts", "run", "--payer", "chain", "--min-far", "0") == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith(": paid")
    key = far_deployment.treasury.key.hex()
    assert key not in out + err + caplog.text and key[:16] not in caplog.text
    assert await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NULL") == 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CHAIN_RPC_URL", "http://127.0.0.1:{free}/key", "no JSON-RPC node answers at http://127.0.0.1:"),
        ("CHAIN_ID", "1", "serves chain id 31337, CHAIN_ID is 1: refusing to sign"),
        ("CHAIN_BATCH_CONTRACT_ADDRESS", "0x000000000000000000000000000000000000dEaD", "no contract at 0x0000"),
    ],
    ids=["unreachable-node", "wrong-chain-id", "contract-not-deployed"],
)
async def test_payouts_run_refuses_a_chain_it_cannot_pay_on_before_claiming_anything(
    payouts_db: asyncpg.Connection,
    chain_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
    value: str,
    message: str,
) -> None:
    await owe(payouts_db)
    monkeypatch.setenv(variable, value.format(free=free_port()))
    assert await far_mesh("payouts", "run", "--payer", "chain") == 1
    assert message in caplog.text and "/key" not in caplog.text
    assert await payouts_db.fetchval("SELECT count(*) FROM far_payment_batches") == 0


async def test_payouts_run_without_a_treasury_key_is_a_configuration_error(
    chain_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PAYOUT_TREASURY_KEY_FILE")
    assert await far_mesh("payouts", "run", "--payer", "chain") == 2
    assert "PAYOUT_TREASURY_KEY_FILE or PAYOUT_TREASURY_KEY" in capsys.readouterr().err


async def export(db: asyncpg.Connection, dsn: str, out_dir: Path, peers: list[str] | None = None) -> PaymentBatch:
    await owe(db, peers)
    batch = await run_payout(dsn, FilePayer(out_dir), min_far=Decimal(0))
    assert batch is not None
    return batch


def operator_pays(d: FarDeployment, payments: list[Payment]) -> str:
    """What an operator does with the exported file: sign and send a batch transfer from the treasury."""
    receipt = send(
        d.w3, d.treasury, {"to": d.deployment.batch_contract, "data": pay_batch_data(d.deployment.token, payments)}
    )
    return receipt["transactionHash"].to_0x_hex()


async def test_an_exported_batch_is_paid_only_once_resolve_finds_its_transaction_on_chain(
    payouts_db: asyncpg.Connection,
    payouts_ledger_dsn: str,
    far_deployment: FarDeployment,
    chain_env: Path,
    tmp_path: Path,
) -> None:
    batch = await export(payouts_db, payouts_ledger_dsn, tmp_path)
    wrong = [Payment(p.wallet, p.units + 1) for p in payments_of(batch)]
    wrong_tx = operator_pays(far_deployment, wrong)
    assert await far_mesh("payouts", "resolve", str(batch.id), "--tx", wrong_tx) == 1
    assert await far_mesh("payouts", "resolve", str(batch.id), "--tx", "0x" + "ab" * 32) == 1  # not mined
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches WHERE id = $1", batch.id) == "submitted"
    assert await payouts_db.fetchval("SELECT count(*) FROM far_session_contributions WHERE paid_at IS NOT NULL") == 0

    right_tx = operator_pays(far_deployment, payments_of(batch))
    treasury = far_deployment.treasury.address
    assert await far_mesh("payouts", "resolve", str(batch.id), "--tx", right_tx, "--sender", treasury) == 0

    stored = await payouts_db.fetchrow(
        "SELECT status, transaction_ref, gas_used, chain_id, chain_genesis, sender FROM far_payment_batches"
    )
    assert (stored["status"], stored["transaction_ref"]) == ("paid", right_tx) and stored["gas_used"] > 0
    # the chain it was paid on, recorded, so reconciliation counts its payouts against that chain's treasury
    genesis = far_deployment.w3.eth.get_block(0)["hash"].to_0x_hex().lower()
    assert (stored["chain_id"], stored["chain_genesis"], stored["sender"]) == (DEV_CHAIN_ID, genesis, treasury)
    refs = await payouts_db.fetch("SELECT DISTINCT transaction_ref FROM far_session_contributions")
    assert [r["transaction_ref"] for r in refs] == [right_tx]


async def test_resolve_without_a_sender_accepts_only_a_payment_from_the_treasury(
    payouts_db: asyncpg.Connection,
    payouts_ledger_dsn: str,
    far_deployment: FarDeployment,
    chain_env: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same amounts to the same wallets from someone else's account are not the treasury paying the batch."""
    batch = await export(payouts_db, payouts_ledger_dsn, tmp_path)
    d, payments = far_deployment, payments_of(batch)
    impostor: LocalAccount = Account.create()
    fund_gas(d.w3, impostor.address, 10**18)
    transfer(d.w3, d.treasury, d.deployment.token, impostor.address, sum(p.units for p in payments))
    approve(d.w3, impostor, d.deployment.token, d.deployment.batch_contract)
    receipt = send(
        d.w3, impostor, {"to": d.deployment.batch_contract, "data": pay_batch_data(d.deployment.token, payments)}
    )
    impostor_tx = receipt["transactionHash"].to_0x_hex()
    assert await far_mesh("payouts", "resolve", str(batch.id), "--tx", impostor_tx) == 1
    assert f"pays from {impostor.address}, not the treasury {d.treasury.address}" in caplog.text
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches WHERE id = $1", batch.id) == "submitted"
    # named explicitly, the operator's --sender is what is checked: still not the transaction's sender
    assert await far_mesh("payouts", "resolve", str(batch.id), "--tx", impostor_tx, "--sender", d.treasury.address) == 1

    treasury_tx = operator_pays(d, payments)
    assert await far_mesh("payouts", "resolve", str(batch.id), "--tx", treasury_tx) == 0
    assert await payouts_db.fetchval("SELECT transaction_ref FROM far_payment_batches WHERE id = $1", batch.id) == (
        treasury_tx
    )


async def test_resolve_without_a_sender_or_a_treasury_key_refuses_naming_both(
    payouts_db: asyncpg.Connection,
    payouts_ledger_dsn: str,
    far_deployment: FarDeployment,
    chain_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    batch = await export(payouts_db, payouts_ledger_dsn, tmp_path)
    tx = operator_pays(far_deployment, payments_of(batch))
    monkeypatch.delenv("PAYOUT_TREASURY_KEY_FILE")
    assert await far_mesh("payouts", "resolve", str(batch.id), "--tx", tx) == 2
    err = capsys.readouterr().err
    assert "--sender" in err and "PAYOUT_TREASURY_KEY_FILE" in err
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches WHERE id = $1", batch.id) == "submitted"
    assert (
        await far_mesh("payouts", "resolve", str(batch.id), "--tx", tx, "--sender", far_deployment.treasury.address)
        == 0
    )


async def test_one_transaction_cannot_resolve_two_batches(
    payouts_db: asyncpg.Connection,
    payouts_ledger_dsn: str,
    far_deployment: FarDeployment,
    chain_env: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    peers = [unique_id("peer") for _ in range(3)]
    first = await export(payouts_db, payouts_ledger_dsn, tmp_path / "1", peers)
    tx = operator_pays(far_deployment, payments_of(first))
    assert await far_mesh("payouts", "resolve", str(first.id), "--tx", tx) == 0
    # later, the same nodes earn the same again: a batch the first transaction matches to the base unit
    second = await export(payouts_db, payouts_ledger_dsn, tmp_path / "2", peers)
    assert payments_of(second) == payments_of(first)
    assert await far_mesh("payouts", "resolve", str(second.id), "--tx", tx) == 1
    assert "already settled another batch" in caplog.text
    assert await payouts_db.fetchval("SELECT status FROM far_payment_batches WHERE id = $1", second.id) == "submitted"


async def test_resolve_refuses_a_batch_the_chain_payer_has_in_flight(
    payouts_db: asyncpg.Connection, far_deployment: FarDeployment, chain_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from payouts.batches import batch_state, claim_batch
    from payouts.payer import ChainPayer
    from payouts.settings import PayoutSettings

    await owe(payouts_db)
    payer = await ChainPayer.connect(PayoutSettings.from_env())
    batch = await claim_batch(payouts_db, "chain", Decimal(0))
    assert batch is not None
    await payer._sign_first(payouts_db, await batch_state(payouts_db, batch.id))
    assert await far_mesh("payouts", "resolve", str(batch.id), "--failed") == 1
    assert "may still be mined" in caplog.text
    assert (await payer.finish_batch(payouts_db, batch.id)).status == "paid"
