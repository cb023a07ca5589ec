"""Stopping a run when asked: Ctrl-C (SIGINT), and SIGTERM, what Slurm, Kubernetes and
``timeout`` send before they kill.

While the training loop runs, the first signal asks it to stop at the next step boundary,
after saving a checkpoint; a second one stops at once. Anywhere else (reading the data,
decoding it) a signal stops at once, since there is nothing to save yet. Either way the
request is remembered: Python must drop an exception raised where it cannot propagate
(in a fork handler, as a DataLoader starts its workers), and ``check`` then raises it
at the next point that asks.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where the main thread was (a KeyboardInterrupt, so that code
    which cleans up after Ctrl-C cleans up after SIGTERM too)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process the signal ended: 130, 143


class StopSignals:
    """SIGINT and SIGTERM handlers for the ``with`` block (the previous ones restored after)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # elsewhere signals cannot be handled
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if not (self.deferring and first):
            raise Stopped(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block the first signal only sets ``requested``, for the loop to act on."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def check(self) -> None:
        """Raise ``Stopped`` if a signal came (and was not acted on)."""
        if self.signum is not None:
            raise Stopped(self.signum)


def leave_signals_to_the_main_process(worker_id: int = 0) -> None:
    """A DataLoader worker's ``worker_init_fn``: a SIGTERM or Ctrl-C sent to the whole
    process group (Slurm, a terminal) is the main process's to act on; a worker it killed
    would turn a clean stop into a DataLoader error."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
