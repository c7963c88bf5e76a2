"""The verifier: its own process that rechecks sampled spans of real sessions and writes verdicts to the ledger.

`recompute` reruns a server span's blocks on the hidden states it was sent and measures how far its answer
was from the server's; `tolerance` says how far is too far for the dtype the states travelled in; `ledger`
records verdicts, slashes the contributions of spans that failed and keeps reputations; `bans` keeps peers
that failed repeatedly out of the workers' routes; `service` is the stream consumer tying them together.
"""

from verifier.recompute import BlockRunner, SpanVerdict, verify_span
from verifier.tolerance import tolerance_for

__all__ = ["BlockRunner", "SpanVerdict", "tolerance_for", "verify_span"]
