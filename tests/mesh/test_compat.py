"""mesh.compat must give petals every name it takes from hivemind; a missing one breaks servers at start-up."""

import ast
import asyncio
import gc
import importlib
import pkgutil
import signal
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hivemind.p2p import P2P, PeerID
from hivemind.p2p.p2p_daemon_bindings.utils import ControlFailure
from hivemind.proto import runtime_pb2

from mesh.compat import _ServerInferenceSession, petals


def hivemind_references(root: Path) -> set[tuple[str, str]]:
    """(module, name) for every `from hivemind... import name` and `hivemind.a.b` attribute chain in `root`."""
    references = set()
    for source in root.rglob("*.py"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # petals has invalid string escapes (DeprecationWarning in 3.11)
            tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hivemind"):
                references |= {(node.module or "", alias.name) for alias in node.names}
            elif isinstance(node, ast.Attribute):
                chain = [node.attr]
                value = node.value
                while isinstance(value, ast.Attribute):
                    chain.insert(0, value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id == "hivemind":
                    references.add((".".join(["hivemind", *chain[:-1]]), chain[-1]))
    return references


def resolves(module_name: str, name: str) -> bool:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    if hasattr(module, name):
        return True
    try:
        importlib.import_module(f"{module_name}.{name}")
    except ImportError:
        return False
    return True


def test_every_name_petals_takes_from_hivemind_resolves_after_compat() -> None:
    references = hivemind_references(Path(petals.__file__).parent)

    assert len(references) > 50  # the walk really found petals' imports
    missing = sorted(f"{module}.{name}" for module, name in references if not resolves(module, name))
    assert missing == []


@pytest.mark.parametrize(
    "module",
    sorted(
        m.name
        for m in pkgutil.walk_packages(petals.__path__, "petals.")
        if m.name.startswith(("petals.client", "petals.server", "petals.cli", "petals.utils"))
    ),
)
def test_petals_client_and_server_modules_import(module: str) -> None:
    importlib.import_module(module)


def test_closing_a_session_on_hiveminds_own_loop_thread_does_not_deadlock_it() -> None:
    """The garbage collector may run a session's __del__ on hivemind's event-loop thread; the close must not
    wait for that thread (itself), or every later Petals call hangs."""
    import asyncio

    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

    _ServerInferenceSession = petals.client.inference_session._ServerInferenceSession

    async def endless_outputs() -> Any:
        while True:
            yield None

    async def open_stream_and_close_it_here() -> Any:
        session = _ServerInferenceSession.__new__(_ServerInferenceSession)
        session._inputs_queue, session._outputs_stream = asyncio.Queue(), endless_outputs()
        session.stepped, session.closed = False, False
        session.close()  # on the loop thread, as __del__ would be
        await asyncio.sleep(0.05)
        return session

    session = RemoteExpertWorker.run_coroutine(open_stream_and_close_it_here(), return_future=True).result(timeout=10)
    assert session.closed and session._outputs_stream is None
    assert (
        RemoteExpertWorker.run_coroutine(asyncio.sleep(0, result="alive"), return_future=True).result(timeout=10)
        == "alive"
    )


def test_a_dropped_session_whose_server_is_gone_is_finalized_without_an_error() -> None:
    class SessionToADeadServer:
        _outputs_stream = object()

        async def _aclose_stream(self) -> None:
            raise ConnectionResetError("the server is gone")

    _ServerInferenceSession.__del__(SessionToADeadServer())  # type: ignore[arg-type]  # must not raise


async def test_a_stream_the_p2p_daemon_refuses_leaves_no_connection_to_it_open() -> None:
    p2p = await P2P.create()
    try:
        nobody = PeerID.from_base58("QmaoPQdTZn5QQyZNboNWSfbWqB4fQxFJr5AMYcmfUDfkj4")
        with pytest.raises(ControlFailure):
            await p2p._client.stream_open(nobody, ("far-mesh-test",))
        gc.collect()  # a leaked daemon connection would warn here (ResourceWarning), failing this test
    finally:
        await p2p.shutdown()


async def test_closing_a_session_that_never_stepped_closes_its_stream_to_the_p2p_daemon() -> None:
    server = await P2P.create()
    client = await P2P.create(initial_peers=await server.get_visible_maddrs())

    async def answer_nothing(requests: Any, _: Any) -> AsyncIterator[runtime_pb2.ExpertResponse]:
        async for _ in requests:
            pass
        return
        yield

    await server.add_protobuf_handler(
        "far-mesh-test", answer_nothing, runtime_pb2.ExpertRequest, stream_input=True, stream_output=True
    )
    try:
        requests: asyncio.Queue[runtime_pb2.ExpertRequest] = asyncio.Queue()
        stream = await client._iterate_protobuf_stream_handler(
            server.peer_id, "far-mesh-test", _queued(requests), runtime_pb2.ExpertResponse
        )
        await _ServerInferenceSession._aclose_stream(SimpleNamespace(_outputs_stream=stream, stepped=False))
        del stream
        gc.collect()  # a leaked daemon connection warns (ResourceWarning) by the test's end, failing it
    finally:
        await client.shutdown()
        await server.shutdown()


async def _queued(queue: "asyncio.Queue[runtime_pb2.ExpertRequest]") -> AsyncIterator[runtime_pb2.ExpertRequest]:
    while True:
        yield await queue.get()


FORKED_CHILD_DROPS_AN_INHERITED_TENSOR = """
import gc, os, sys
from multiprocessing.reduction import ForkingPickler
if sys.argv[1] == "compat":
    import mesh.compat
else:
    import torch.multiprocessing
    torch.multiprocessing.set_sharing_strategy(sys.argv[1])
import torch
shared = torch.empty(16, dtype=torch.uint8).share_memory_()  # as hivemind's MPFuture state bytes are
child = os.fork()
if child == 0:  # a Petals handler or DHT process, dropping what it inherited
    del shared
    gc.collect()
    os._exit(0)
os.waitpid(child, 0)
ForkingPickler.dumps(shared[0])  # the parent sends a future's state to another process
del shared
gc.collect()
print("parent alive")
"""


@pytest.fixture(scope="module")
def forked_child_runs() -> Iterator[dict[str, "subprocess.Popen[str]"]]:
    """Both strategies' runs of the script, started together: each spends seconds importing torch (and petals,
    through mesh.compat), which a second core does alongside the first."""
    runs = {
        strategy: subprocess.Popen(
            [sys.executable, "-c", FORKED_CHILD_DROPS_AN_INHERITED_TENSOR, strategy],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        for strategy in ("file_system", "compat")
    }
    yield runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize(
    ("strategy", "survives"),
    [("file_system", False), ("compat", True)],
    ids=["hivemind's file_system strategy", "the strategy mesh.compat selects"],
)
def test_a_forked_child_dropping_an_inherited_shared_tensor_kills_its_parent_only_under_file_system(
    forked_child_runs: dict[str, "subprocess.Popen[str]"], strategy: str, survives: bool
) -> None:
    """The crash that killed local swarm servers (`could not unlink the shared memory file`), reproduced with
    torch alone: the control shows the mechanism, the other that servers started through mesh.compat are immune."""
    process = forked_child_runs[strategy]
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    assert ("parent alive" in result.stdout) is survives, result.stderr[-2000:]
    if not survives:
        assert result.returncode == -signal.SIGABRT
        assert "could not unlink the shared memory file" in result.stderr


def test_mesh_compat_selects_the_file_descriptor_sharing_strategy() -> None:
    import torch.multiprocessing

    assert torch.multiprocessing.get_sharing_strategy() == "file_descriptor"


def test_closing_a_session_whose_server_never_ends_it_gives_up_after_the_bound_and_marks_it_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Petals' own close waits for the server's end-of-session reply with no bound: its thread would hang for ever.
    import time

    from mesh import compat

    monkeypatch.setattr(compat, "SESSION_CLOSE_TIMEOUT_S", 0.2)

    class Unanswered:
        _outputs_stream: object = object()
        _inputs_queue: object = object()
        closed = False

        async def _aclose_stream(self) -> None:
            await asyncio.Event().wait()  # the server never answers

    session = Unanswered()
    started = time.monotonic()
    _ServerInferenceSession.close(session)  # type: ignore[arg-type]
    assert time.monotonic() - started < 3
    assert session.closed and session._outputs_stream is None and session._inputs_queue is None
