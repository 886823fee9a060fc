"""Stop signals: SIGTERM or SIGUSR1 (cluster preemption, `scancel`, `timeout`, Kubernetes) and SIGINT (Ctrl-C) stop
a run cleanly instead of killing it, also when they reach every process of the group.

Schedulers, `timeout` and terminals signal the whole process group: the main process and its DataLoader workers.
The workers ignore these signals (`quiet_worker_init`) and keep serving batches; only the main process decides. While
`StopRequest` is active, a signal only records itself. The loop asks, at the end of each step, whether a stop was
requested (in pretraining on any rank: the flag travels in the step's one all-reduce, so all ranks decide at the
same step), keeps its progress (a checkpoint, complete shards), shuts its workers down and raises `Stopped`, which
exits with 143 (SIGTERM, SIGUSR1) or 130 (SIGINT), as shells report a process ended by those signals.

Launchers (`torchrun`, `accelerate launch`) pass the signal they get on to every rank, so a rank sees SIGTERM twice:
a repeated SIGTERM or SIGUSR1 changes nothing. A second SIGINT more than `REPEAT_WINDOW_S` after the first is a
second Ctrl-C: it stops at once (`KeyboardInterrupt`), keeping only what was saved before.
"""

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what shells and schedulers report for a run ended by SIGTERM
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a run ended by Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# A launcher forwards the SIGINT it got to every rank within milliseconds; a person's second Ctrl-C takes longer.
REPEAT_WINDOW_S = 1.0


def exit_code(signal_name: str | None) -> int:
    """130 for SIGINT, else 143 (SIGTERM, SIGUSR1, or a stop another rank decided)."""
    return INTERRUPTED_EXIT_CODE if signal_name == "SIGINT" else PREEMPTED_EXIT_CODE


class Stopped(SystemExit):
    """The run stopped on a stop signal after keeping its progress (`checkpoint`: what was saved, or None)."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None) -> None:
        super().__init__(exit_code(signal_name))
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class StopRequest:
    """Context manager recording the first stop signal in `signal_name` (None until one arrives).

    Handlers can only be installed from the main thread; elsewhere (a run started from a worker thread) it records
    nothing and the signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only assignments here: logging from a signal handler can deadlock on the logging lock.
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.signal_name is None:
            self.signal_name, self._first_at = name, now
        elif name == "SIGINT" and now - self._first_at > REPEAT_WINDOW_S:
            raise KeyboardInterrupt  # a second Ctrl-C: stop at once

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._record) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()


def quiet_worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the worker ignores SIGINT and SIGUSR1, and SIGTERM unless its parent sends it.

    The main process decides what a stop signal does; a worker killed by one would make it raise "DataLoader worker
    is killed by signal" instead. The parent (the DataLoader shutting down a stuck worker, or multiprocessing ending
    its daemonic children at exit) stops a worker with SIGTERM, so that one still ends it: SIGTERM is blocked and a
    thread reads it with `sigwaitinfo`, which tells the sender. Where `sigwaitinfo` is missing (macOS) SIGTERM is
    ignored outright, and the main process must shut its workers down itself (`workers_shut_down`).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit the mask
    threading.Thread(target=_end_on_parents_sigterm, args=(os.getppid(),), daemon=True).start()


def _end_on_parents_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)  # as PyTorch's own worker handler does for its parent's SIGTERM


def chain_worker_init(worker_init_fn):
    """`quiet_worker_init` followed by a loader's own `worker_init_fn` (if any)."""
    if worker_init_fn is None or worker_init_fn is quiet_worker_init:
        return quiet_worker_init

    def init(worker_id: int) -> None:
        quiet_worker_init(worker_id)
        worker_init_fn(worker_id)

    return init


@contextlib.contextmanager
def workers_shut_down(iterator) -> Iterator:
    """Yield a DataLoader `iterator` (PyTorch's, or the generator of Accelerate's prepared loader) and shut its
    workers down when leaving, also on an error or a stop.

    Left to garbage collection, an iterator that an exception's traceback still holds keeps its workers until the
    interpreter exits. Closing Accelerate's generator drops the PyTorch iterator inside, which shuts its workers."""
    try:
        yield iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None) or getattr(iterator, "close", None)
        if shutdown is not None:
            shutdown()
