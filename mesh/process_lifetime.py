"""Tying a swarm process's lifetime to its supervisor's: nothing a server started outlives the process that
supervises it, however that process dies.

A Petals server forks handler processes, a DHT process and `p2pd` daemons. Killing the supervisor (SIGKILL, an
out-of-memory kill) runs none of its clean-up, so without help every one of those lives on, holding the
server's peer identity and ports. Linux's parent-death signal (`prctl(PR_SET_PDEATHSIG)`) closes the gap: a
process that asks for it is sent SIGKILL when the thread that started it ends. Each link of the chain asks:

- the supervisor passes its pid in `PARENT_PID_VARIABLE`; the server (through `mesh.petals_cli`) or the local
  swarm's fork server (`mesh.swarm_forks`) asks for the signal first thing, then checks that its parent is still
  that pid (the parent may have died before it asked);
- every process the server forks from Python asks in the child right after `fork()` (`os.register_at_fork`);
- every `p2pd` hivemind spawns asks before it executes (asyncio's `create_subprocess_exec`, given a
  `preexec_fn`).

A supervisor's own helpers are tied the same way: a process forked inside `children_die_with_this_thread()`
(the local swarm's DHT client) dies with the thread that forked it, and so do the executables it spawns.

Elsewhere than Linux nothing is asked and the supervisor's own stop (by process group) is all there is.
"""

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

PARENT_PID_VARIABLE = "FAR_MESH_PARENT_PID"
"""Set by a supervisor in a child's environment: the pid whose death must take the child with it."""
_PR_SET_PDEATHSIG = 1
# Looked up once, at import: a child between fork() and exec() must not load libraries.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the thread that started it ends (Linux; elsewhere a no-op)."""
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def die_with_supervisor() -> None:
    """In a supervised process: die with the supervisor named in PARENT_PID_VARIABLE, and make every process
    this one starts die with it in turn. Exits at once when the supervisor is already gone."""
    supervisor = os.environ.get(PARENT_PID_VARIABLE)
    if supervisor is None:
        return
    die_with_parent()
    if os.getppid() != int(supervisor):  # it died before we asked: the signal will never come
        os._exit(1)
    os.environ.pop(PARENT_PID_VARIABLE)  # our own children are tied to us below, not to our supervisor
    os.register_at_fork(after_in_child=die_with_parent)
    _tie_spawned_executables()


def _tie_spawned_executables() -> None:
    """hivemind starts `p2pd` with `asyncio.create_subprocess_exec`; give each such child the parent-death
    signal before it executes. Only a supervised server runs this: the process is ours alone."""
    original: Callable[..., Any] = asyncio.create_subprocess_exec

    @functools.wraps(original)
    async def create_subprocess_exec(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("preexec_fn", die_with_parent)
        return await original(*args, **kwargs)

    asyncio.create_subprocess_exec = create_subprocess_exec
    asyncio.subprocess.create_subprocess_exec = create_subprocess_exec


class _ForkingThread(threading.local):
    ties_children = False


_forking_thread = _ForkingThread()


def _tie_child_if_asked() -> None:
    if _forking_thread.ties_children:  # the child runs on a copy of the thread that forked it
        die_with_parent()
        _tie_spawned_executables()


os.register_at_fork(after_in_child=_tie_child_if_asked)


@contextlib.contextmanager
def children_die_with_this_thread() -> Iterator[None]:
    """Processes this thread forks meanwhile (and what they spawn) die when this thread ends."""
    _forking_thread.ties_children = True
    try:
        yield
    finally:
        _forking_thread.ties_children = False


def supervised_environment() -> dict[str, str]:
    """What a supervisor adds to a child's environment so that the child dies with it."""
    return {PARENT_PID_VARIABLE: str(os.getpid())}
