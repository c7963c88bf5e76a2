"""The route each billed step of a request took, kept beside its token stream so whoever ends the request pays it.

Every node's payment is its share of a session's cost by work (blocks x positions fed, `workers.attribution`).
Kept only in the memory of the worker that ran the steps, that work died with the worker: a successor that
ended the request at once (the buyer had cancelled meanwhile) billed the tokens on the stream and credited no
node for them (issue #29). So the script that appends a token to the stream also pushes, in the same atomic
call, the step that produced it onto `keys.served_steps(request_id)`: a token is on the stream (billed) if and
only if its step is in the list, whatever crashes when. The successor reads the list with the stream when it
takes the lease, and the finishing script deletes it with the one usage record it writes, so each step is
credited by exactly one usage record. docs/architecture.md, "Exactly once", has the whole argument.

The record is compact JSON, since a request writes one per token: {"n": positions fed, "s": [[peer id, first
block, end block, public name or null], ...]}. The public name, a stranger's free text, is cut to a bound before it
gets here, keeping the wallet it announces (`mesh.announce.kept_public_name`).
"""

import functools
import json
from dataclasses import dataclass

POSITIONS_FIELD = "n"
"""How many positions the step fed through every block of its route (the prompt, for a prefill)."""
SPANS_FIELD = "s"
"""The route: one [peer id, start block, end block, public name] per server that served the step."""


@dataclass(frozen=True)
class StepSpan:
    """One server's part of a step's route: blocks [start_block, end_block) on peer `peer_id`."""

    peer_id: str
    start_block: int
    end_block: int
    public_name: str | None = None


_COMPACT = json.JSONEncoder(separators=(",", ":"))


@functools.lru_cache(maxsize=1024)
def _route_json(spans: tuple[StepSpan, ...]) -> str:
    return _COMPACT.encode([[s.peer_id, s.start_block, s.end_block, s.public_name] for s in spans])


@dataclass(frozen=True)
class ServedStep:
    """One step whose token was written: the route that served it and how many positions it fed."""

    tokens: int
    spans: tuple[StepSpan, ...]

    def encode(self) -> str:
        """The record, written once per token: a session's steps share one route, whose JSON is made once."""
        return f'{{"{POSITIONS_FIELD}":{int(self.tokens)},"{SPANS_FIELD}":{_route_json(self.spans)}}}'

    @classmethod
    def decode(cls, raw: str | bytes) -> "ServedStep":
        """The step `encode` wrote; ValueError for anything else (a record is never guessed at: it is money)."""
        try:
            record = json.loads(raw)
            tokens = record[POSITIONS_FIELD]
            spans = tuple(
                StepSpan(str(peer), int(start), int(end), None if name is None else str(name))
                for peer, start, end, name in record[SPANS_FIELD]
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a served step: {raw!r:.200}") from exc
        if type(tokens) is not int or tokens < 0 or any(s.end_block <= s.start_block for s in spans):
            raise ValueError(f"not a served step: {raw!r:.200}")
        return cls(tokens=tokens, spans=spans)
