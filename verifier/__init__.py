"""The verifier: its own process that rechecks sampled spans of real sessions and writes verdicts to the ledger.

`recompute` reruns a server span's blocks on the hidden states it was sent and measures how far its answer
was from the server's; `tolerance` says how far is too far for the dtype the states travelled in; `ledger`
records verdicts, slashes the contributions of spans that failed, keeps reputations and bans repeat
offenders; `service` is the stream consumer tying them together and copying bans to Redis for the workers.
"""

# Nothing is imported here: `far-mesh --help` imports `verifier.commands`, and recomputation loads torch.
__all__: list[str] = []
