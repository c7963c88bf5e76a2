"""Honouring a buyer's routing preferences (`GenerateJob.provider`) in a run's sessions.

A run whose job carries preferences that shape routes gets one `RouteRule` for all its sessions (its failovers and
its choices), built once from the job, the verifier's reputations (for `min_reputation`) and the workers' peer
measurements (for `sort`). Each session then routes through its own `SessionRoutes` view of the model's shared
sequence manager, so other requests of the model route as they did. Before a session opens, the rule is checked
against the swarm view: a block no allowed server holds ends the request at once with `route_unsatisfiable`,
instead of waiting out WORKER_NO_ROUTE_TIMEOUT_S for a route that cannot exist (docs/routing.md).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from mesh.route_choice import RouteRule, RouteUnsatisfiable, block_ranges
from mesh.session import SpanRecorder, SwarmSession
from mesh.session_routes import SessionRoutes
from protocol import keys
from protocol.error_codes import StreamErrorCode
from protocol.events import ErrorBody
from protocol.jobs import GenerateJob
from protocol.peer_measurements import PeerMeasurement, read_measurements
from protocol.usage import ROUTE_POLICY_MAX_CHARS
from workers.route_policy import banned_peers
from workers.served_model import ServedModel


@dataclass
class RunRouting:
    """One run's preferences, as every session of the run applies them."""

    rule: RouteRule
    measured: Mapping[str, PeerMeasurement] = field(default_factory=dict)
    banned: frozenset[str] = frozenset()
    """Never offered, even where the route policy's held-back probation servers are (`mesh.session_routes`)."""

    def view(self, served: ServedModel) -> SessionRoutes:
        manager = served.model.transformer.h.sequence_manager
        return SessionRoutes(manager, self.rule, self.measured, banned=self.banned, speeds=served.peer_speeds)


async def plan_routing(redis: aioredis.Redis, job: GenerateJob) -> RunRouting | None:
    """The run's routing, or None when the job routes as any other (no preferences, or only max_price)."""
    prefs = job.provider
    if prefs is None or not prefs.shapes_routes:
        return None
    reputations: dict[str, float] = {}
    if prefs.min_reputation is not None:
        scores: Mapping[Any, Any] = await redis.hgetall(keys.NODE_REPUTATION)  # type: ignore[misc]
        for node, score in scores.items():
            try:
                reputations[node.decode() if isinstance(node, bytes) else str(node)] = float(score)
            except ValueError:
                continue
    rule = RouteRule(
        only=frozenset(prefs.only) if prefs.only else None,
        ignore=frozenset(prefs.ignore or ()),
        sort=prefs.sort,
        min_reputation=prefs.min_reputation,
        reputations=reputations,
        pin_first_route=not prefs.allow_fallbacks,
    )
    measured = await read_measurements(redis, job.model_id) if prefs.sort else {}
    return RunRouting(rule, measured, await banned_peers(redis))


def unsatisfiable(job: GenerateJob, blocks: list[int], why: str = "") -> ErrorBody:
    """The error that ends a request whose preferences leave `blocks` without a server."""
    message = (
        f"no server the request's provider preferences allow holds blocks {block_ranges(blocks)} of {job.model_id}"
        f"{why}; loosen provider.only, provider.ignore or provider.min_reputation (or allow fallbacks) and send it "
        "again"
    )
    return ErrorBody(code=StreamErrorCode.ROUTE_UNSATISFIABLE, message=message)


async def open_session(
    served: ServedModel,
    routing: RunRouting | None,
    *,
    max_length: int,
    recorder: SpanRecorder | None,
) -> SwarmSession | RouteUnsatisfiable:
    """A session routed by `routing` (as Petals routes without it), or why no allowed route exists now."""
    if routing is None:
        return served.open_session(max_length=max_length, recorder=recorder)
    routes = routing.view(served)
    try:
        missing = await served.run_blocking(routes.uncovered_blocks)
    except TimeoutError:  # the swarm view could not be read: the first step fails over as any failed step does
        missing = []
    if missing:
        pinned = " (allow_fallbacks is false: only the first route's servers may serve)" if routing.rule.pinned else ""
        return RouteUnsatisfiable(missing, pinned)
    return served.open_session(max_length=max_length, recorder=recorder, routes=routes)


def with_preferences(route_policy: str | None, job: GenerateJob) -> str | None:
    """The usage record's `route_policy` with the buyer's preferences that applied appended (cut to its bound)."""
    if job.provider is None or not (label := job.provider.label()):
        return route_policy
    return ";".join(part for part in (route_policy, f"prefs:{label}") if part)[:ROUTE_POLICY_MAX_CHARS]
