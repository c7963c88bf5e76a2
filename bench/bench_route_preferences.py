"""Buyers' routing preferences on a real local swarm: do they change the route a session takes, and what do they cost?

A swarm of the 4-block tiny model with three servers: `whole` holds blocks 0..3, `first` 0..1 and `second` 2..3,
each announcing its own wallet. One Petals client, as a worker holds one per model.

1. Routes. The route each session really took (the spans of its server sessions after one step), for: no
   preferences (the model's shared sequence manager: the baseline), and per-session views (`mesh.session_routes`)
   with `ignore` of whole's wallet, `only` first's and second's peer ids, each sort, and `only` first (its blocks
   2..3 uncovered: how fast that is refused). A baseline session opened after the others shows the shared manager
   still routes as before (its `blocked_servers` untouched). Then, with whole held back as the route policy holds a
   probation server back, a view ignoring first is offered whole again, read from the DHT.
2. Cost. `make_sequence` by the per-session view against Petals' own (`RemoteSequenceManager.make_sequence`,
   min_latency) on the same client, median of many calls; and 16-token sessions (prefill + steps) routed through
   the view against through the shared manager, both over the whole server (so the work is the same). Ratios.

    .venv/bin/python bench/bench_route_preferences.py [--calls 500] [--sessions 5] [--tokens 16]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devstack.harness.interrupts import interrupt_on_signals  # noqa: E402
from mesh.client import open_client  # noqa: E402
from mesh.local_swarm import LocalSwarm, ServerPlan  # noqa: E402
from mesh.route_choice import RouteRule, RouteUnsatisfiable  # noqa: E402
from mesh.session import SwarmSession  # noqa: E402
from mesh.session_routes import SessionRoutes  # noqa: E402
from mesh.tiny_models import ensure_tiny_models  # noqa: E402

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "far-mesh"
WALLETS = {
    "whole": "0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1",
    "first": "0xb2b2b2b2b2B2b2B2B2b2b2B2B2b2B2B2b2b2b2b2",
    "second": "0xc3c3c3c3c3c3c3c3c3C3C3c3C3C3C3c3C3C3c3c3",
}
PROMPT = "The mesh streams tokens"


def route_of(model: Any, prompt_ids: list[int], routes: SessionRoutes | None, names: dict[str, str]) -> str:
    session = SwarmSession(model, max_length=64, routes=routes)
    try:
        result = session.step(prompt_ids)
        return " + ".join(f"{names[span.peer_id]} {span.start_block}..{span.end_block - 1}" for span in result.spans)
    finally:
        session.close()


def session_seconds(model: Any, prompt_ids: list[int], routes: SessionRoutes | None, tokens: int) -> float:
    started = time.perf_counter()
    session = SwarmSession(model, max_length=len(prompt_ids) + tokens, routes=routes)
    try:
        feed = prompt_ids
        for _ in range(tokens):
            result = session.step(feed)
            feed = [int(result.logits.argmax())]
    finally:
        session.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    spec = ensure_tiny_models(CACHE_DIR)[0]
    plans = [
        ServerPlan(spec, 0, 4, wallet=WALLETS["whole"], label="whole"),
        ServerPlan(spec, 0, 2, wallet=WALLETS["first"], label="first"),
        ServerPlan(spec, 2, 4, wallet=WALLETS["second"], label="second"),
    ]
    with LocalSwarm(plans) as swarm:
        names = {server.peer_id: label for server, label in zip(swarm.servers, WALLETS, strict=True)}
        ids = {label: peer for peer, label in names.items()}
        client = open_client(spec, swarm.initial_peers)
        try:
            model = client.model
            prompt_ids = list(client.tokenizer(PROMPT)["input_ids"])
            manager = model.transformer.h.sequence_manager

            def view(**rule: Any) -> SessionRoutes:
                return SessionRoutes(manager, RouteRule(**rule))

            print("1. the route each session took (after one step)")
            print(f"  baseline, no preferences (shared manager): {route_of(model, prompt_ids, None, names)}")
            cases = {
                "ignore whole's wallet": view(ignore=frozenset({WALLETS["whole"]})),
                "only first and second (peer ids)": view(only=frozenset({ids["first"], ids["second"]})),
                "sort latency": view(sort="latency"),
                "sort throughput": view(sort="throughput"),
                "sort price": view(sort="price"),
            }
            for label, routes in cases.items():
                print(f"  {label}: {route_of(model, prompt_ids, routes, names)}")
            unsatisfiable = view(only=frozenset({WALLETS["first"]}))
            started = time.perf_counter()
            missing = unsatisfiable.uncovered_blocks()
            checked_ms = (time.perf_counter() - started) * 1000
            print(f"  only first's wallet: blocks {missing} uncovered, found in {checked_ms:.2f} ms before any session")
            try:
                route_of(model, prompt_ids, unsatisfiable, names)
            except RouteUnsatisfiable as exc:
                print(f"  ... and a session routed by it anyway raises: {exc}")
            print(f"  baseline again, after all of these: {route_of(model, prompt_ids, None, names)}")
            print(f"  shared manager's blocked_servers: {manager.blocked_servers}")
            from hivemind.p2p import PeerID

            manager.blocked_servers = {PeerID.from_base58(ids["whole"])}  # as the route policy holds one back
            manager.update(wait=True)
            print(f"  with whole held back (on probation), baseline: {route_of(model, prompt_ids, None, names)}")
            held = view(ignore=frozenset({ids["first"]}))
            print(f"  ... ignoring first, the held-back server serves: {route_of(model, prompt_ids, held, names)}")
            manager.blocked_servers = None
            manager.update(wait=True)

            print("2. cost")
            own, mine = [], []
            routes = view(sort="latency")
            for _ in range(args.calls):
                started = time.perf_counter()
                manager.make_sequence(mode="min_latency", cache_tokens_needed=64)
                own.append(time.perf_counter() - started)
                started = time.perf_counter()
                routes.make_sequence(mode="min_latency", cache_tokens_needed=64)
                mine.append(time.perf_counter() - started)
            own_us, mine_us = statistics.median(own) * 1e6, statistics.median(mine) * 1e6
            print(f"  make_sequence, per-session view: median {mine_us:.0f} us over {args.calls} calls")
            print(f"    baseline, Petals' own on the shared manager: {own_us:.0f} us; ratio {mine_us / own_us:.2f}x")
            whole_only = view(only=frozenset({ids["whole"]}))  # the route the baseline takes, so the work is equal
            shared_s, viewed_s = [], []
            for _ in range(args.sessions):
                shared_s.append(session_seconds(model, prompt_ids, None, args.tokens))
                viewed_s.append(session_seconds(model, prompt_ids, whole_only, args.tokens))
            shared, viewed = statistics.median(shared_s), statistics.median(viewed_s)
            print(f"  {args.tokens}-token session through the view: median {viewed * 1000:.1f} ms over {args.sessions}")
            print(f"    baseline, through the shared manager: {shared * 1000:.1f} ms; ratio {viewed / shared:.2f}x")
        finally:
            client.close()


if __name__ == "__main__":
    interrupt_on_signals("bench_route_preferences")
    main()
