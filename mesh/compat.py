"""The one door to Petals: makes petals 2.2.0.post1 import and run on hivemind 1.1.12.

Petals 2.2 was written against hivemind 1.1.10, whose package roots re-exported names from their submodules
(`from hivemind import PeerID`, `hivemind.get_dht_time`, ...). hivemind 1.1.12 dropped those re-exports, so a
bare `import petals` fails. This module puts each missing name back, taken from the submodule that really
defines it, and only then imports petals. Everything in this repository gets petals from here (ruff bans
`import petals` elsewhere); server and DHT processes start through `python -m mesh.petals_cli`, which imports
this module before any petals code runs.

It also mends how Petals and hivemind close an inference session's streams, each fix beside its reason:
`close()` is safe on hivemind's own event-loop thread and at interpreter exit (`_close_without_deadlock`), a
session's `__del__` ignores a failed close as Petals' own close does (`_finalize_quietly`), and no p2p daemon
socket is left open by a refused stream (`_stream_open_closing_on_refusal`) or a session that never stepped
(`_aclose_stream_even_unstepped`).

hivemind sets torch's tensor sharing strategy to `file_system` at import. Under it a process that forks keeps
a reference count for each shared tensor inside the shared memory itself, which fork does not increment: a
forked child (a Petals server's handlers, the DHT process) that drops a tensor it inherited unlinks its
parent's memory, and the parent later dies in torch's allocator with `could not unlink the shared memory file`
(`tests/mesh/test_compat.py` reproduces it). This module selects `file_descriptor` instead, torch's own default
on Linux, whose memory is unlinked once created and never again (HIVEMIND_MEMORY_SHARING_STRATEGY overrides).

`tests/mesh/test_compat.py` walks petals' source and fails when a name it takes from hivemind is missing, so a
hivemind or petals upgrade that needs another name is caught there, not in a running server.
"""

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

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


SHARING_STRATEGY_VARIABLE = "HIVEMIND_MEMORY_SHARING_STRATEGY"
SHARING_STRATEGY = "file_descriptor"
"""How processes share tensors: never `file_system`, hivemind's choice (see the module's docstring)."""


def share_tensors_safely() -> None:
    """Select SHARING_STRATEGY for hivemind (read at its import) and torch (in case hivemind came first)."""
    os.environ.setdefault(SHARING_STRATEGY_VARIABLE, SHARING_STRATEGY)
    import torch.multiprocessing

    torch.multiprocessing.set_sharing_strategy(os.environ[SHARING_STRATEGY_VARIABLE])  # type: ignore[no-untyped-call]


share_tensors_safely()
restore_hivemind_names()

import petals  # noqa: E402 - must follow the restoration above
from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker  # noqa: E402
from hivemind.p2p.p2p_daemon_bindings.control import ControlClient  # noqa: E402
from hivemind.p2p.p2p_daemon_bindings.datastructures import PeerID, StreamInfo  # noqa: E402
from hivemind.p2p.p2p_daemon_bindings.utils import raise_if_failed, read_pbmsg_safe, write_pbmsg  # noqa: E402
from hivemind.proto import p2pd_pb2  # noqa: E402
from petals import AutoDistributedModelForCausalLM, ClientConfig  # noqa: E402
from petals.client.inference_session import _ServerInferenceSession  # noqa: E402

SESSION_CLOSE_TIMEOUT_S = 5.0
"""How long closing a server's inference stream waits for the server's end-of-session reply (milliseconds when it
answers). Petals waits with no bound: a stream a server never answers held the thread closing it for ever, seen in
`bench/bench_http_baseline.py`, where the garbage collector closed a dropped session inside another session's step,
and that step, and its request, never finished."""

logger = logging.getLogger(__name__)


async def _aclose_within_bound(session: Any) -> None:
    """Close the session's stream, giving the server `SESSION_CLOSE_TIMEOUT_S` to answer; closed either way (the
    server drops the session's caches once the stream is gone)."""
    try:
        await asyncio.wait_for(session._aclose_stream(), SESSION_CLOSE_TIMEOUT_S)
    except TimeoutError:
        logger.warning("a server did not end an inference session within %.0f s; dropped it", SESSION_CLOSE_TIMEOUT_S)
    finally:
        session._outputs_stream = session._inputs_queue = None
        session.closed = True


def _close_without_deadlock(session: Any) -> None:
    """Petals' `close()` blocks until hivemind's event-loop thread has closed the stream. When the garbage
    collector runs `__del__` on that very thread, it waits for itself: the thread deadlocks and every later
    Petals call hangs (seen with 8 concurrent sessions). On that thread, schedule the close instead. And while
    the interpreter shuts down, that thread no longer runs: waiting for it would hang the exit forever, and
    the servers drop the session's caches themselves once its connection is gone. Elsewhere, wait for the close,
    at most `SESSION_CLOSE_TIMEOUT_S`."""
    if sys.is_finalizing() or session._outputs_stream is None:
        return
    if threading.current_thread() is RemoteExpertWorker._event_thread:
        asyncio.get_event_loop().create_task(_aclose_within_bound(session))
        return
    RemoteExpertWorker.run_coroutine(_aclose_within_bound(session))


def _finalize_quietly(session: Any) -> None:
    """Petals closes a route's sessions ignoring failures (the server may be gone), but a session dropped by a
    failed step is closed by `__del__`, whose failure becomes an unraisable exception: ignore it there too."""
    with contextlib.suppress(Exception):
        _close_without_deadlock(session)


async def _stream_open_closing_on_refusal(
    client: ControlClient, peer_id: PeerID, protocols: Sequence[str]
) -> tuple[StreamInfo, asyncio.StreamReader, asyncio.StreamWriter]:
    """hivemind's `stream_open` opens a connection to the p2p daemon per stream and leaves it open when the
    daemon refuses the stream (a dead peer, i.e. every failover): the leaked socket surfaces later, at garbage
    collection, as a ResourceWarning. Same request, but the connection is closed whenever it fails."""
    reader, writer = await client.daemon_connector.open_connection()
    try:
        request = p2pd_pb2.Request(
            type=p2pd_pb2.Request.STREAM_OPEN,
            streamOpen=p2pd_pb2.StreamOpenRequest(peer=peer_id.to_bytes(), proto=list(protocols)),
        )
        await write_pbmsg(writer, request)
        response = p2pd_pb2.Response()
        await read_pbmsg_safe(reader, response)
        raise_if_failed(response)
    except BaseException:
        writer.close()
        raise
    return StreamInfo.from_protobuf(response.streamInfo), reader, writer


_aclose_stepped_stream = _ServerInferenceSession._aclose_stream


async def _aclose_stream_even_unstepped(session: Any) -> None:
    """hivemind closes an inference stream's p2p daemon socket only inside the stream's generator, which Petals
    never starts for a session that did not step (a route that failed while being set up): start it, then
    cancel it, so the generator's own cleanup closes the socket."""
    if session._outputs_stream is None or session.stepped:
        await _aclose_stepped_stream(session)
        return
    first = asyncio.ensure_future(session._outputs_stream.__anext__())
    await asyncio.sleep(0)  # the generator runs up to its first read of the stream
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await first


_ServerInferenceSession.close = _close_without_deadlock
_ServerInferenceSession._aclose_stream = _aclose_stream_even_unstepped
_ServerInferenceSession.__del__ = _finalize_quietly
ControlClient.stream_open = _stream_open_closing_on_refusal

__all__ = [
    "AutoDistributedModelForCausalLM",
    "ClientConfig",
    "RESTORED_NAMES",
    "SHARING_STRATEGY",
    "petals",
    "restore_hivemind_names",
]
