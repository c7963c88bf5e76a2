"""Recordings the verifier cannot recompute, and whose fault that is.

A recorded span has two authors. The worker wrote the inputs (it sent them), the span's place (which blocks it
routed to) and the dtype the server announced; the server wrote the outputs. A reply that cannot be verified
(undecodable, in a dtype no honest server sends, the wrong shape, positions missing) is the server's doing, and
dropping it would let any cheat switch verification off by replying oddly on purpose: it is a verdict against
the server, of the mismatch class, with its cause (`verifier.recompute.verify_span`). A part the worker wrote
that cannot be used convicts nobody: `RecordingUnusable` says so, and the verifier counts and logs it instead.
"""

from typing import Literal

Cause = Literal["over-tolerance", "undecodable", "unknown-dtype", "wrong-shape", "missing-positions"]
"""Why a span's verdict is a mismatch: its recomputation is too far off (`over-tolerance`), or its reply could not
be verified (the rest; `schema/0018_verification_causes.sql` lists the same words)."""


class RecordingUnusable(ValueError):
    """The worker's own part of a recorded span (its inputs, its blocks, its width) cannot be used: the span is
    not verified, and its server is not blamed for it."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
