"""The one door to Petals: makes petals 2.2.0.post1 import and run on hivemind 1.1.12.

Petals 2.2 was written against hivemind 1.1.10, whose package roots re-exported names from their submodules
(`from hivemind import PeerID`, `hivemind.get_dht_time`, ...). hivemind 1.1.12 dropped those re-exports, so a
bare `import petals` fails. This module puts each missing name back, taken from the submodule that really
defines it, and only then imports petals. Everything in this repository gets petals from here (ruff bans
`import petals` elsewhere); server and DHT processes start through `python -m mesh.petals_cli`, which imports
this module before any petals code runs.

`tests/mesh/test_compat.py` walks petals' source and fails when a name it takes from hivemind is missing, so a
hivemind or petals upgrade that needs another name is caught there, not in a running server.
"""

import importlib

RESTORED_NAMES: dict[str, dict[str, str]] = {
    "hivemind": {
        "P2P": "hivemind.p2p",
        "P2PContext": "hivemind.p2p",
        "PeerID": "hivemind.p2p",
        "deserialize_tensor_stream": "hivemind.compression.serialization",
        "deserialize_torch_tensor": "hivemind.compression.serialization",
        "serialize_torch_tensor": "hivemind.compression.serialization",
        "anext": "hivemind.utils.asyncio",
        "get_logger": "hivemind.utils.logging",
        "nested_compare": "hivemind.utils.nested",
        "nested_flatten": "hivemind.utils.nested",
        "nested_pack": "hivemind.utils.nested",
        "MSGPackSerializer": "hivemind.utils.serializer",
        "BatchTensorDescriptor": "hivemind.utils.tensor_descr",
        "TensorDescriptor": "hivemind.utils.tensor_descr",
        "MAX_DHT_TIME_DISCREPANCY_SECONDS": "hivemind.utils.timed_storage",
        "TimedStorage": "hivemind.utils.timed_storage",
        "get_dht_time": "hivemind.utils.timed_storage",
    },
    # hivemind 1.1.10 re-exported its utils submodules from `hivemind.utils` too; petals reaches some that way.
    "hivemind.utils": {
        "anext": "hivemind.utils.asyncio",
        "nested_compare": "hivemind.utils.nested",
        "BatchTensorDescriptor": "hivemind.utils.tensor_descr",
    },
}
"""namespace -> {name: the submodule that defines it}: what hivemind 1.1.10 exported and 1.1.12 does not."""


def restore_hivemind_names() -> None:
    """Put back every name in RESTORED_NAMES that the installed hivemind lacks; a no-op when run twice."""
    for namespace, names in RESTORED_NAMES.items():
        target = importlib.import_module(namespace)
        for name, source in names.items():
            if not hasattr(target, name):
                setattr(target, name, getattr(importlib.import_module(source), name))


restore_hivemind_names()

import petals  # noqa: E402 - must follow the restoration above
from petals import AutoDistributedModelForCausalLM, ClientConfig  # noqa: E402

__all__ = ["AutoDistributedModelForCausalLM", "ClientConfig", "RESTORED_NAMES", "petals", "restore_hivemind_names"]
