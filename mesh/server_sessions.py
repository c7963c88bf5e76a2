"""The one hook into a Petals inference session's servers: a call on every server session it enters.

Petals' `InferenceSession` makes one server session per span of its route in `_enter_server_sessions`, when it
opens and again after each failover, and keeps them private. What this project observes per server (the spans a
spot check records, `mesh.session.SpanRecorder`; each server's decode time, `mesh.peer_speed.PeerSpeeds`) is
watched from there, through this one function, so a Petals upgrade that renames the method breaks one place.
"""

from collections.abc import Callable
from typing import Any


def watch_server_sessions(session: Any, watch: Callable[[Any], None]) -> None:
    """Call `watch` on every server session `session` (a Petals `InferenceSession`) enters from now on; watchers
    run in the order they were attached."""
    enter = session._enter_server_sessions

    def entering(chosen_spans: Any) -> Any:
        server_sessions = enter(chosen_spans)
        for server_session in server_sessions:
            watch(server_session)
        return server_sessions

    session._enter_server_sessions = entering
