"""A stop request: SIGTERM, which SageMaker (a stopped job, a spot interruption) and Kubernetes
send before they take the machine, ends the run cleanly instead of losing the steps since the
last checkpoint. The loop finishes the step it is in, writes a checkpoint and exits 0; the same
command resumes exactly."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopRequest:
    """Installs a SIGTERM handler that only records the request (the loop acts on it between
    steps); `restore()` puts the previous handler back."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("SIGTERM: finishing this step, then a checkpoint and exit 0 (the same command resumes)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
