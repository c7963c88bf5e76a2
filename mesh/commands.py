"""`far-mesh models generate|convert`, `far-mesh swarm` and `far-mesh node`: the mesh room's commands.

Handlers import torch, transformers and petals lazily, so `far-mesh --help` stays fast and the light image
(no mesh extra) still runs every other command.
"""

import argparse
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from types import FrameType

from mesh import dht_node, node_registration
from mesh.node import QUANT_TYPES
from protocol.catalog import ModelSpec

EXIT_REFUSED = 2


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    models = subparsers.add_parser(
        "models", help="make the local models used by development and tests (tiny generated ones, real converted ones)"
    )
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    generate = models_commands.add_parser("generate", help="generate (or reuse) the tiny Llama models")
    generate.add_argument("--cache-dir", type=Path, help="default: FAR_MESH_CACHE_DIR, else ~/.cache/far-mesh")
    generate.set_defaults(handler=generate_models)
    convert = models_commands.add_parser(
        "convert", help="convert (or reuse) the real models installed as GGUF files (SmolLM2-135M-Instruct)"
    )
    convert.add_argument("--cache-dir", type=Path, help="default: FAR_MESH_CACHE_DIR, else ~/.cache/far-mesh")
    convert.set_defaults(handler=convert_models)

    swarm = subparsers.add_parser("swarm", help="run a local Petals swarm on loopback until Ctrl-C")
    swarm.add_argument(
        "--model",
        action="append",
        required=True,
        help="a tiny model name, a converted model's id (smollm2-135m-instruct) or a FAR_MESH_MODELS id (repeatable)",
    )
    swarm.add_argument("--split", type=int, default=2, help="servers per copy of each model (default 2)")
    swarm.add_argument("--replicas", type=int, default=1, help="copies of each span (default 1)")
    dht = swarm.add_mutually_exclusive_group()
    dht.add_argument("--dht-port", type=int, help="DHT bootstrap port on 127.0.0.1 (default: a free one)")
    dht.add_argument(
        "--initial-peers",
        nargs="+",
        default=_bootstrap_from_env(),
        help="join this DHT (e.g. the Procfile's `far-mesh dht`) instead of starting one; waits until it listens "
        "(default: FAR_MESH_DHT_BOOTSTRAP, as the workers use; unset: the swarm runs its own DHT)",
    )
    swarm.add_argument("--wallet", action="append", default=[], help="wallets to pay, given to servers in turn")
    swarm.add_argument("--cache-dir", type=Path, help="default: FAR_MESH_CACHE_DIR, else ~/.cache/far-mesh")
    swarm.set_defaults(handler=run_swarm)

    node = subparsers.add_parser("node", help="serve transformer blocks into a swarm and be paid in $FAR")
    node.add_argument("--wallet", required=True, help="EIP-55 checksummed address that $FAR is paid into")
    node.add_argument("--model", required=True, help="model id from FAR_MESH_MODELS, tiny model name, hub id or path")
    bootstrap = _bootstrap_from_env()
    node.add_argument(
        "--initial-peers",
        nargs="+",
        required=not bootstrap,
        default=bootstrap,
        help="multiaddrs of the swarm's DHT (default: FAR_MESH_DHT_BOOTSTRAP, as the workers use)",
    )
    span = node.add_mutually_exclusive_group()
    span.add_argument("--blocks", help="half-open block span to serve, e.g. 0:2")
    span.add_argument("--num-blocks", type=int, help="serve this many blocks, chosen by Petals")
    node.add_argument("--public-name", help="a label shown next to the wallet in the swarm")
    node.add_argument("--port", type=int, help="TCP port to listen on (default: any free one)")
    node.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    node.add_argument("--dht-prefix", help="block uid prefix; default: the model's, from the catalog or Petals")
    node.add_argument("--throughput", type=float, help="announced tokens/s; default: measured by Petals")
    node.add_argument("--device", help="cpu, cuda, cuda:1...; default: Petals' choice")
    node.add_argument("--torch-dtype", default="auto", help="float32, float16, bfloat16 or auto")
    node.add_argument(
        "--quant-type",
        choices=QUANT_TYPES,
        default="none",
        help="weight quantization; only none for now: spot checks have no tolerance for int8 or nf4 weights, and "
        "Petals' own default (nf4 on a GPU) would have honest work convicted",
    )
    node.add_argument(
        "--identity",
        type=Path,
        help="the node's libp2p key, created on first start so its peer id (and registration) survives restarts "
        "(default: FAR_MESH_CACHE_DIR/node-identity.key; give each node on one machine its own)",
    )
    node.add_argument(
        "--portal-url",
        help="the portal (e.g. https://portal.example): print where to register the node, then its earnings",
    )
    node.add_argument(
        "--earnings-every", type=float, default=300.0, help="seconds between earnings lines (default 300)"
    )
    node.set_defaults(handler=run_node)

    dht_node.register(subparsers)
    node_registration.add_command(subparsers)


def _bootstrap_from_env() -> list[str]:
    return [a.strip() for a in os.environ.get("FAR_MESH_DHT_BOOTSTRAP", "").split(",") if a.strip()]


def generate_models(args: argparse.Namespace) -> int:
    from mesh.tiny_models import ensure_tiny_models

    for spec in ensure_tiny_models(_cache_dir(args.cache_dir)):
        print(f"{spec.model_id} {spec.source}")
    return 0


def convert_models(args: argparse.Namespace) -> int:
    from mesh.gguf_checkpoint import GgufCheckpointError, ensure_packaged_models

    try:
        specs = ensure_packaged_models(_cache_dir(args.cache_dir))
    except GgufCheckpointError as exc:
        return _refuse("models convert", exc)
    for spec in specs:
        print(f"{spec.model_id} {spec.source}")
    return 0


def run_swarm(args: argparse.Namespace) -> int:
    from mesh.local_swarm import LocalSwarm, SwarmError, split_plans
    from mesh.node import NodeRefused

    signal.signal(signal.SIGTERM, _interrupt)
    initial_peers = [] if args.dht_port is not None else args.initial_peers
    try:
        dht_node.refuse_placeholders(initial_peers)
        plans = [
            plan
            for name in args.model
            for plan in split_plans(_resolve_model(name, args.cache_dir), args.split, args.replicas, args.wallet)
        ]
        if initial_peers:
            print(f"far-mesh swarm: joining the DHT at {' '.join(initial_peers)} once it listens", flush=True)
        with LocalSwarm(plans, dht_port=args.dht_port, initial_peers=initial_peers) as swarm:
            print(f"initial peers: {' '.join(swarm.initial_peers)}", flush=True)
            for server in swarm.servers:
                plan = server.plan
                print(
                    f"{server.name} peer_id={server.peer_id} pid={server.pid} "
                    f"model={plan.model.model_id} blocks={plan.start_block}:{plan.end_block}",
                    flush=True,
                )
            print("swarm ready; Ctrl-C stops it", flush=True)
            signal.pause()
    except (NodeRefused, ValueError) as exc:  # ValueError: an unknown model, a mistyped wallet
        return _refuse("swarm", exc)
    except SwarmError as exc:
        print(f"far-mesh swarm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def run_node(args: argparse.Namespace) -> int:
    from mesh.announce import hardware_word
    from mesh.node import NodeConfig, NodeRefused, check_node, detect_gpu, parse_blocks, server_command
    from mesh.node_earnings import status_line
    from mesh.node_keeper import NodeKeeper
    from protocol.wallet import InvalidWallet

    try:
        spec = _catalog_model(args.model, None)
        dht_node.refuse_placeholders(args.initial_peers)
        config = NodeConfig(
            model_source=spec.weights_source if spec else args.model,
            initial_peers=tuple(args.initial_peers),
            dht_prefix=args.dht_prefix or (spec.dht_prefix if spec else None),
            wallet=args.wallet,
            label=args.public_name,
            blocks=parse_blocks(args.blocks) if args.blocks else None,
            num_blocks=args.num_blocks,
            host=args.host,
            port=args.port,
            throughput=args.throughput,
            device=args.device,
            torch_dtype=args.torch_dtype,
            quant_type=args.quant_type,
            hardware=hardware_word(*detect_gpu(args.device), args.quant_type),
        )
        check_node(config)
        identity = args.identity.expanduser() if args.identity else _cache_dir(None) / "node-identity.key"
        if not identity.exists():
            dht_node.create_identity(identity)
        peer_id = dht_node.peer_id_of(identity)
    except (NodeRefused, InvalidWallet, ValueError, dht_node.DhtRefused) as exc:
        return _refuse("node", exc)
    command = server_command(replace(config, identity_path=identity))
    print(f"far-mesh node: serving {config.model_source} as {config.public_name} peer_id={peer_id}", flush=True)
    if not args.portal_url:
        return NodeKeeper(command).run()
    node_registration.announce_registration(identity, args.portal_url, args.wallet)
    portal_url = args.portal_url
    return NodeKeeper(
        command, status_line=lambda restarts: status_line(portal_url, peer_id, restarts), every_s=args.earnings_every
    ).run()


def _refuse(command: str, exc: Exception) -> int:
    print(f"far-mesh {command}: {exc}", file=sys.stderr)
    return EXIT_REFUSED


_SWARM_PID = os.getpid()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Children forked by hivemind (the swarm's DHT client) inherit this handler; the swarm stops them itself,
    # and a KeyboardInterrupt there would only print a traceback (honcho signals the whole process group).
    if os.getpid() == _SWARM_PID:
        raise KeyboardInterrupt


def _cache_dir(override: Path | None) -> Path:
    from mesh.settings import MeshSettings

    return override.expanduser() if override else MeshSettings.from_env().cache_dir


def _catalog_model(name: str, cache_dir: Path | None) -> ModelSpec | None:
    """A tiny model (generated on demand), a packaged GGUF model (converted on demand) or a FAR_MESH_MODELS entry
    named `name`, if any."""
    from mesh import gguf_checkpoint, tiny_models
    from mesh.settings import MeshSettings

    for recipe in tiny_models.TINY_MODELS:
        if recipe.name == name:
            return tiny_models.spec_for(recipe, tiny_models.ensure_tiny_model(_cache_dir(cache_dir), recipe))
    for packaged in gguf_checkpoint.PACKAGED_MODELS:
        if packaged.model_id == name:
            try:
                path = gguf_checkpoint.ensure_checkpoint(_cache_dir(cache_dir), packaged)
            except gguf_checkpoint.GgufCheckpointError as exc:
                raise ValueError(str(exc)) from exc
            return gguf_checkpoint.spec_for(packaged, path)
    return MeshSettings.from_env().catalog.get(name)


def _resolve_model(name: str, cache_dir: Path | None) -> ModelSpec:
    spec = _catalog_model(name, cache_dir)
    if spec is None:
        from mesh.gguf_checkpoint import PACKAGED_MODELS
        from mesh.tiny_models import TINY_MODELS

        known = [recipe.name for recipe in TINY_MODELS] + [packaged.model_id for packaged in PACKAGED_MODELS]
        raise ValueError(f"unknown model {name!r}; local models are {known}, others come from FAR_MESH_MODELS")
    return spec
