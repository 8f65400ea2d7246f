"""SIGTERM and SIGHUP end a run as Ctrl-C does: what a job scheduler, ``timeout`` or a container stop sends.

:func:`install` (``cosim.cli.run_main`` calls it) turns either signal into :class:`Terminated`, a
``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` and ``finally`` runs as on Ctrl-C: training
saves its checkpoint, output folders are unlocked, SUMO is closed; ``run_main`` then exits 128 + the
signal's number (143 for SIGTERM). Worker processes a run starts (``ProcessPoolExecutor``) get
:func:`worker_init` as their initializer and are stopped with :func:`stop_workers`: a worker that gets
SIGTERM closes what it opened (its SUMO) and exits.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
from typing import Any

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """A SIGTERM or SIGHUP arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_raised = False


def _raise(signum: int, frame: Any) -> None:
    global _raised
    if _raised:  # once: a second SIGTERM must not cut the checkpoint the first one is saving
        return
    _raised = True
    raise Terminated(signum)


def install() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (no-op elsewhere)."""
    global _raised
    if threading.current_thread() is not threading.main_thread():
        return
    _raised = False
    for s in SIGNALS:
        signal.signal(s, _raise)


def _worker_exit(signum: int, frame: Any) -> None:
    # A pool worker catches every exception of a task and reads the next one: clean up and leave instead.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    try:
        atexit._run_exitfuncs()  # closes the SUMO processes (weakref.finalize runs at exit)
    finally:
        os._exit(128 + signum)


def worker_init() -> None:
    """Initializer of worker processes: SIGTERM/SIGHUP close what the worker opened and end it;
    Ctrl-C is left to the parent, which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in SIGNALS:
        signal.signal(s, _worker_exit)


def stop_workers(pool: Any, grace_s: float = 10.0) -> None:
    """Cancel what a ``ProcessPoolExecutor`` has not started and end its worker processes (SIGTERM,
    then SIGKILL after ``grace_s``)."""
    import time

    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(2)


def cancel_ray_tasks(refs: Any) -> None:
    """Cancel the Ray tasks a run started (on Ctrl-C or SIGTERM), ignoring those already gone."""
    import ray

    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # finished, or its worker died: nothing to stop
            pass


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or a Terminated) in the chain of causes and contexts of ``exc``, if any.

    One that lands inside a compiled (numba) kernel surfaces as a SystemError ("returned a result with an
    exception set") whose cause is the KeyboardInterrupt: whoever saves work on an interrupt must see it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
