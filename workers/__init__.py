"""The worker fleet: arq workers that run generate jobs on a Petals swarm and stream every token to Redis.

Each worker process serves one or more models (one Petals client each, shared by all its jobs), appends
each token to the request's stream, bills the request once with a usage record naming every node that served
it, recovers from failed servers and from other workers' crashes, and publishes swarm snapshots.
"""

from workers.settings import WorkerSettings

__all__ = ["WorkerSettings"]
