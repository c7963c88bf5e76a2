"""Everything that talks to Petals or hivemind; the only room besides `workers` that imports them.

- `compat`: the one way to import petals (2.2.0.post1 on hivemind 1.1.12); `petals_cli`: its CLIs, behind compat.
- `tiny_models`: small Llama checkpoints generated locally, for development and tests.
- `node`: the node launcher (`far-mesh node`), `announce`: the wallet a node announces in its public name.
- `local_swarm`: a real swarm on loopback (`far-mesh swarm`, test fixtures), started with the node launcher.
- `swarm_forks`: the local swarm's fork server, which forks its servers from one process that imported petals.
- `client`: a bounded Petals client for a catalog model; `session`, `snapshot`: stepping a session and reading
  the swarm (the workers' side).

Importing this package imports nothing heavy; each module imports torch or petals where it needs them.
"""
