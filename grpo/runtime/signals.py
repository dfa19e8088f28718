"""A stop request: SIGTERM, which SageMaker (a stopped job, a spot interruption) and Kubernetes
send before they take the machine, ends the run cleanly instead of losing the steps since the
last checkpoint. The step in progress is abandoned if its first optimizer step has not begun
(grpo/training/step.py checks at its stages, the sampler at its looks), else finished; the last
completed step is checkpointed and the run exits 0; the same command resumes exactly."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopRequest:
    """Installs a SIGTERM handler that only records the request (the step and the loop act on it);
    `restore()` puts the previous handler back."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("SIGTERM: abandoning this step unless its optimizer step has begun, then a checkpoint and "
                    "exit 0 (the same command resumes)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
