"""The data of each portal page, as the JSON twin returns it and the page's template renders it.

Each function takes the request's state (and the signed-in session, when the page needs one) and returns one
JSON-ready document; money is always a decimal string.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from portal import api_keys, balances, earnings, nonces, registrations, siwe, swarm_map, withdrawals
from portal.auth import Session, require_session
from portal.charts import earnings_svg
from portal.errors import BadInput, NotFound
from portal.price_chart import price_svg
from portal.state import PortalState
from protocol.catalog import ModelCatalog, ModelSpec, is_model_id
from protocol.live_prices import all_prices_now, prices_now
from protocol.money import plain_text
from protocol.pricing import PREMIUM_BASE_BPS
from protocol.swarm import read_swarm_snapshots


async def wallet_nodes(state: PortalState, wallet: str) -> dict[str, Any]:
    nodes = await earnings.wallet_nodes(state.db, wallet)
    snapshots = await read_swarm_snapshots(state.swarm, fresh_only=False)
    now = datetime.now(UTC)
    live: dict[str, dict[str, Any]] = {}
    for snapshot in snapshots.values():
        if not snapshot.is_fresh(now):
            continue
        for server in snapshot.servers:
            entry = live.setdefault(server.peer_id, {"online": False, "spans": [], "throughput": 0.0})
            entry["online"] = entry["online"] or server.online
            entry["spans"].append(
                {"model_id": snapshot.model_id, "start_block": server.start_block, "end_block": server.end_block}
            )
            entry["throughput"] = max(entry["throughput"], server.throughput)
    rows = []
    for row in nodes.rows:
        seen = live.get(row["node_id"])
        rows.append(
            {
                "node_id": row["node_id"],
                "public_name": row["public_name"],
                "registered": row["registered"],
                "registered_wallet": row["registered_wallet"],
                "announced_wallet": row["announced_wallet"],
                "online": bool(seen and seen["online"]),
                "blocks": seen["spans"] if seen else row["models"],
                "throughput": seen["throughput"] if seen else row["throughput"],
                "last_seen_at": row["last_seen_at"].isoformat() if row["last_seen_at"] else None,
                "tokens_served": row["tokens_contributed"] or 0,
                "earned_far": row["earned_far"],
                "unpaid_far": row["unpaid_far"],
                "gpu_model": row["gpu_model"],
                "vram_gb": str(row["vram_gb"]) if row["vram_gb"] is not None else None,
                "reputation": str(row["reputation"]) if row["reputation"] is not None else None,
                "verified_ok": row["verified_ok"],
                "verified_mismatches": row["verified_mismatches"],
                "banned": bool(row["banned"]),
            }
        )
    return {"wallet": wallet, "nodes": rows}


async def wallet_earnings(state: PortalState, wallet: str, days: int) -> dict[str, Any]:
    return await earnings.wallet_earnings(state.db, wallet, days=days)


def earnings_chart(document: dict[str, Any]) -> str:
    return earnings_svg(document["by_day"])


async def wallet_payouts(state: PortalState, wallet: str) -> dict[str, Any]:
    totals = await earnings.wallet_earnings(state.db, wallet, days=1)
    history = await earnings.payout_history(state.db, wallet)
    for row in history:
        for name in ("created_at", "completed_at"):
            row[name] = row[name].isoformat() if row[name] else None
    return {
        "wallet": wallet,
        "paid_far": totals["totals"]["paid_far"],
        "in_payment_far": totals["totals"]["in_payment_far"],
        "unpaid_far": totals["totals"]["unpaid_far"],
        "held_unregistered_far": totals["held_unregistered_far"],
        "batches": history,
    }


async def swarm_models(state: PortalState) -> dict[str, Any]:
    snapshots = await read_swarm_snapshots(state.swarm, fresh_only=False)
    catalog = state.settings.catalog
    prices = await all_prices_now(state.swarm, catalog)
    models = []
    for model_id in sorted(set(catalog.model_ids) | set(snapshots)):
        snapshot = snapshots.get(model_id)
        summary = swarm_map.swarm_map(snapshot) if snapshot else None
        spec = catalog.get(model_id)
        models.append(
            {
                "model_id": model_id,
                "on_sale": spec is not None,
                **_what_it_is(spec),
                "prices": prices[model_id].quote() if model_id in prices else None,
                "snapshot": summary is not None,
                "fresh": bool(summary and summary["fresh"]),
                "healthy": bool(summary and summary["healthy"]),
                "active_nodes": summary["active_nodes"] if summary else 0,
                "num_blocks": summary["num_blocks"] if summary else None,
            }
        )
    return {"models": models}


def _model_id(model_id: str | None) -> str:
    if not model_id or not is_model_id(model_id):
        raise BadInput("model_id must be a model id such as meta-llama/Llama-2-7b-chat-hf", field="model_id")
    return model_id


async def swarm_model(state: PortalState, model_id: str) -> dict[str, Any]:
    snapshots = await read_swarm_snapshots(state.swarm, fresh_only=False)
    snapshot = snapshots.get(_model_id(model_id))
    if snapshot is None:
        raise NotFound(f"no worker has published a snapshot of {model_id}'s swarm", field="model_id")
    spec = state.settings.catalog.get(model_id)
    prices = (await prices_now(state.swarm, state.settings.catalog, spec)).quote() if spec else None
    return (
        swarm_map.swarm_map(snapshot)
        | _what_it_is(spec)
        | {"prices": prices, "price_history": await _price_history(state, model_id)}
    )


PRICE_HISTORY_ROWS = 200
"""Steps of a model's price the swarm page charts: the latest, from the ledger's full history."""
_PRICE_HISTORY = """
SELECT priced_at, multiplier, prompt_price_per_token_far, completion_price_per_token_far FROM far_model_prices
WHERE model_id = $1 ORDER BY priced_at DESC LIMIT $2
"""


async def _price_history(state: PortalState, model_id: str) -> list[dict[str, str]]:
    """The latest steps of `model_id`'s price, oldest first (docs/pricing.md); money as decimal strings."""
    rows = await state.db.fetch(_PRICE_HISTORY, model_id, PRICE_HISTORY_ROWS)
    return [
        {
            "priced_at": row["priced_at"].isoformat(),
            **{
                name: plain_text(row[column])  # as quoted: "0.0004578", not NUMERIC's 18 places
                for name, column in (
                    ("price_multiplier", "multiplier"),
                    ("prompt_price_per_token_far", "prompt_price_per_token_far"),
                    ("completion_price_per_token_far", "completion_price_per_token_far"),
                )
            },
        }
        for row in reversed(rows)
    ]


def price_chart(document: dict[str, Any]) -> str:
    return price_svg(document["price_history"], datetime.now(UTC))


def _what_it_is(spec: ModelSpec | None) -> dict[str, Any]:
    """What the catalogue says a model is; all None for a model a swarm serves but the mesh does not sell."""
    if spec is None:
        return {"family": None, "parameters": None, "context_length": None, "license": None}
    return ModelCatalog.describe(spec)


async def onboarding(state: PortalState, model_id: str | None, session: Session | None) -> dict[str, Any]:
    chosen = _model_id(model_id or state.settings.default_model_id)
    snapshots = await read_swarm_snapshots(state.swarm, fresh_only=False)
    document = swarm_map.onboarding(
        snapshots.get(chosen),
        model_id=chosen,
        num_blocks=None,
        wallet=session.wallet if session else None,
        initial_peers=state.settings.portal_initial_peers,
        image=state.settings.portal_node_image,
    )
    document["models"] = sorted(set(state.settings.catalog.model_ids) | set(snapshots))
    document["suggested_premium"] = await _premium_of(state, chosen, document.get("suggested_blocks"))
    return document


async def _premium_of(state: PortalState, model_id: str, blocks: dict[str, Any] | None) -> str | None:
    """The weight the pricer gives the work of the suggested blocks in their providers' shares (the thinnest of
    them), e.g. "1.5"; None when the pricer gives none (off, or not priced yet)."""
    spec = state.settings.catalog.get(model_id)
    if spec is None or blocks is None:
        return None
    premiums = (await prices_now(state.swarm, state.settings.catalog, spec)).block_premium_bps  # as jobs get them
    if not premiums:
        return None
    span = premiums[blocks["start_block"] : blocks["end_block"]]
    return format((Decimal(max(span, default=PREMIUM_BASE_BPS)) / PREMIUM_BASE_BPS).normalize(), "f")


async def sign_in_message(state: PortalState, wallet: str) -> dict[str, Any]:
    ttl = timedelta(seconds=state.settings.portal_nonce_ttl_s)
    nonce = await nonces.issue(state.db, "sign-in", ttl)
    now = datetime.now(UTC).replace(microsecond=0)
    message = siwe.SiweMessage(
        domain=state.settings.portal_domain,
        address=wallet,
        statement=siwe.STATEMENT,
        uri=state.sign_in_uri,
        version="1",
        chain_id=state.settings.portal_chain_id,
        nonce=nonce,
        issued_at=now,
        expiration_time=now + ttl,
    )
    return {"message": message.text(), "nonce": nonce, "expires_at": (now + ttl).isoformat()}


async def statement(
    state: PortalState, kind: str, node_id: str, wallet: str, from_wallet: str | None
) -> dict[str, Any]:
    if kind not in ("register", "transfer"):
        raise BadInput("kind must be register or transfer", field="kind")
    if kind == "transfer" and from_wallet is None:
        raise BadInput("a transfer names from_wallet, the node's current owner", field="from_wallet")
    if not 1 <= len(node_id) <= 128 or any(c.isspace() for c in node_id):
        raise BadInput("node_id must be a peer id (1 to 128 characters, no spaces)", field="node_id")
    ttl = timedelta(seconds=state.settings.portal_nonce_ttl_s)
    nonce = await nonces.issue(state.db, "register" if kind == "register" else "transfer", ttl)
    made = registrations.new_statement(
        "register" if kind == "register" else "transfer",
        state.binding,
        node_id=node_id,
        wallet=wallet,
        nonce=nonce,
        from_wallet=from_wallet if kind == "transfer" else None,
    )
    return {
        "kind": kind,
        "statement": made.text(),
        "signer": made.signer,
        "expires_at": (made.issued_at + ttl).isoformat(),
    }


async def keys_page(state: PortalState, session: Session | None) -> dict[str, Any]:
    signed_in = require_session(session)
    return {"wallet": signed_in.wallet, "keys": await api_keys.list_keys(state.db, signed_in.wallet)}


async def key_spend(state: PortalState, session: Session | None, key_id: str, days: int) -> dict[str, Any]:
    signed_in = require_session(session)
    since = datetime.now(UTC).date() - timedelta(days=days - 1)
    return await api_keys.key_spend(state.db, signed_in.wallet, key_id, since=since)


async def buyer_balance(
    state: PortalState, session: Session | None, before: int | None, amount: Decimal
) -> dict[str, Any]:
    """The signed-in buyer's balance, how to deposit, and a page of deposits and charges (newest first)."""
    signed_in = require_session(session)
    document = await balances.buyer_balance(state.db, state.swarm, signed_in.wallet, before=before)
    how = balances.DepositHow(
        contract=state.settings.deposit_contract_address,
        token=state.settings.chain_token_address,
        chain_id=state.settings.chain_id,
    )
    return document | {
        "deposit": balances.deposit_instructions(how, amount),
        "withdrawals": await withdrawals.history(state.db, signed_in.wallet),
    }
