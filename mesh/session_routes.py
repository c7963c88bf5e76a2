"""One session's own view of a model's sequence manager: its own exclusions and ranking, nobody else's.

Every session of a model shares one Petals `RemoteSequenceManager` (one DHT view, one ping aggregator, one
updater thread, one ban list); its `blocked_servers` is shared too, so a buyer's `ignore` set there would reroute
every other buyer's sessions. Petals' `InferenceSession` asks its manager for little: `make_sequence` (the only
routing decision), `block_uids`, `config`, `state.p2p`, `rpc_info`, request metadata, retry delays and the
success/failure reports. `SessionRoutes` passes all of that through to the shared manager (so a failure this
session meets still bans the server for everyone, as before) and answers `make_sequence` itself: the shared view's
servers, filtered by the request's `RouteRule`, ranked by `mesh.route_choice`. Nothing is copied and nothing
shared is changed, so other sessions of the model route exactly as they did.

The shared view leaves out the servers the route policy holds back (`workers.route_policy`: banned ones, and
those on probation where a reputable server holds the same blocks). Holding a probation server back must never
cost a route, so when the buyer's rule leaves blocks without a server, the probation servers the rule allows are
read from the DHT and offered too (never a banned one).
"""

import math
from collections.abc import Mapping
from typing import Any

from mesh.announce import wallet_from_public_name
from mesh.client import reread_swarm
from mesh.peer_speed import PeerSpeeds
from mesh.route_choice import Candidate, Hop, RouteRule, RouteUnsatisfiable, choose_route, uncovered
from protocol.peer_measurements import PeerMeasurement


def held_back_spans(manager: Any, peers: frozenset[str]) -> dict[str, Any]:
    """The spans (Petals' `RemoteSpanInfo`) of `peers` as the DHT announces them, ignoring every block list
    (blocking: one DHT read, TimeoutError after the client's request timeout)."""
    from mesh.compat import petals

    read = petals.utils.dht.get_remote_module_infos(manager.dht, manager.block_uids, latest=True, return_future=True)
    infos = read.result(manager.config.request_timeout)
    spans = petals.utils.dht.compute_spans(infos, min_state=petals.data_structures.ServerState.ONLINE)
    return {peer.to_base58(): span for peer, span in spans.items() if peer.to_base58() in peers}


class SessionRoutes:
    """A stand-in for the shared `RemoteSequenceManager` inside one `InferenceSession` (see the module doc)."""

    def __init__(
        self,
        manager: Any,
        rule: RouteRule,
        measured: Mapping[str, PeerMeasurement] | None = None,
        *,
        banned: frozenset[str] = frozenset(),
        speeds: PeerSpeeds | None = None,
    ) -> None:
        """`measured`: the workers' measurements (`protocol.peer_measurements`) for servers this client has not
        pinged or timed; `banned`: the verifier's banned peers, which are never offered even when the rule needs
        them; `speeds`: this worker's own timings of each server's steps (`mesh.peer_speed`), preferred to
        `measured`'s."""
        self._manager = manager
        self.rule = rule
        self._measured = measured or {}
        self._banned = banned
        self._speeds = speeds
        self.routes: list[list[Hop]] = []
        """Every route (or part of one, after a failure) this view chose, in order: what tests and logs read."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    def __len__(self) -> int:
        return len(self._manager)

    def candidates(self) -> list[Candidate]:
        """The online servers the rule allows, with the client's pings and this worker's step timings (or the
        workers' measurements for a server this one has not measured) and what each announces."""
        return [candidate for candidate, _ in self._allowed().values()]

    def uncovered_blocks(self) -> list[int]:
        """The blocks no allowed server holds now (blocking the first time, while the view is read)."""
        return uncovered(self.candidates(), 0, len(self._manager))

    def make_sequence(
        self,
        start_index: int = 0,
        end_index: int | None = None,
        *,
        mode: str,
        cache_tokens_needed: int | None = None,
    ) -> list[Any]:
        """Petals' `make_sequence`, answered from the allowed servers by the rule's sort (`mode` is ignored: an
        inference session always asks for min_latency, and the buyer's sort replaces it), steering clear of servers
        short of cache for `cache_tokens_needed` as Petals does."""
        from mesh.compat import petals

        end = len(self._manager) if end_index is None else end_index
        allowed = self._allowed()
        try:
            route = choose_route(
                [candidate for candidate, _ in allowed.values()],
                start_index,
                end,
                self.rule.sort,
                cache_tokens_needed=cache_tokens_needed,
            )
        except RouteUnsatisfiable as exc:
            pinned = " (allow_fallbacks is false: only the first route's servers may serve)" if self.rule.pinned else ""
            raise RouteUnsatisfiable(exc.blocks, pinned) from None
        self.rule.chose(route)
        self.routes.append(route)
        spans = [allowed[hop.candidate.peer_id][1] for hop in route]
        return [
            petals.data_structures.RemoteSpanInfo(span.peer_id, hop.start, hop.end, span.server_info)
            for hop, span in zip(route, spans, strict=True)
        ]

    def _allowed(self) -> dict[str, tuple[Candidate, Any]]:
        """Peer id -> (candidate, Petals span) of every server the rule allows: the shared view's, and the held-back
        probation servers' when the shared view's leave a block without a server."""
        manager = self._manager
        self._ensure_view()
        with manager.lock_changes:
            spans = {span.peer_id.to_base58(): span for span in manager.state.sequence_info.spans_by_priority}
        allowed = self._filter(spans)
        held_back = frozenset(peer.to_base58() for peer in (manager.blocked_servers or ())) - self._banned
        if held_back and uncovered([c for c, _ in allowed.values()], 0, len(manager)):
            allowed |= self._filter(held_back_spans(manager, held_back))
        return allowed

    def _filter(self, spans: Mapping[str, Any]) -> dict[str, tuple[Candidate, Any]]:
        rtts = self._manager.ping_aggregator.to_dict()
        allowed = {}
        for peer, span in spans.items():
            info = span.server_info
            rtt = rtts.get(span.peer_id)
            seen = self._measured.get(peer)
            if rtt is None and seen is not None:
                rtt = seen.rtt_s if seen.reachable else math.inf
            decode_s = self._speeds.get(peer) if self._speeds is not None else None
            if decode_s is None and seen is not None:
                decode_s = seen.decode_s_per_block
            candidate = Candidate(
                peer_id=peer,
                start=int(span.start),
                end=int(span.end),
                wallet=wallet_from_public_name(getattr(info, "public_name", None)),
                rtt_s=rtt,
                inference_rps=_positive(getattr(info, "inference_rps", None)),
                cache_tokens_left=getattr(info, "cache_tokens_left", None),
                decode_s_per_block=decode_s,
            )
            if self.rule.allows(candidate):
                allowed[peer] = (candidate, span)
        return allowed

    def _ensure_view(self) -> None:
        """Start the shared updater and wait for its read, as Petals' own `make_sequence` does, but for at most the
        client's request timeout (Petals waits for ever while the DHT is unreachable): TimeoutError after it."""
        manager = self._manager
        with manager._thread_start_lock:
            if not manager.is_alive():
                manager._thread.start()
        if not manager.ready.is_set():
            reread_swarm(manager)


def _positive(value: object) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return None
