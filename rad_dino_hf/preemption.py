"""Preemption: SIGTERM or SIGUSR1 (cluster preemption, `scancel`, Kubernetes) stops a run cleanly instead of killing it.

While `PreemptionRequest` is active, the first such signal only records itself. The training loop asks, after every
optimizer step, whether any rank has recorded one (a sum over ranks, so that all ranks decide at the same step),
then every rank saves the checkpoint together and raises `Preempted`, which exits the process with
`PREEMPTED_EXIT_CODE`. Running the same command again resumes from that checkpoint exactly. A second signal gets the
handler that was there before (by default: the process dies at once), for when waiting for the step is not wanted.
"""

import signal
import threading
from types import FrameType

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what shells and schedulers report for a run ended by SIGTERM
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """The run stopped on a preemption signal after saving `checkpoint`; exits with `PREEMPTED_EXIT_CODE`."""

    def __init__(self, signal_name: str, step: int, checkpoint: str) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class PreemptionRequest:
    """Context manager recording the first preemption signal in `signal_name` (None until one arrives).

    Handlers can only be installed from the main thread; elsewhere (a run started from a worker thread) it records
    nothing and the signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _record(self, signum: int, frame: FrameType | None) -> None:
        # Only an assignment here: logging from a signal handler can deadlock on the logging lock.
        self.signal_name = signal.Signals(signum).name
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "PreemptionRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._record) for signum in PREEMPTION_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()
