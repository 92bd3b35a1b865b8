"""Stopping a run from outside, cleanly: Ctrl-C (SIGINT) and SIGTERM (a cluster's time limit, ``timeout``, a
shutdown).

The signal only sets a flag (:class:`StopRequest`); the program checks it between two training steps and stops
there: never in the middle of a step, where an optimiser's update would be half applied. The run then saves a
checkpoint at that step (:mod:`.checkpoint`: a resumed run goes on from it as the uninterrupted run did) and
writes the map and poses it reached. A second Ctrl-C (or SIGTERM) aborts at once, writing nothing more: the last
checkpoint on the disk is whole whatever moment the abort comes at.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["SIGNAL_NAMES", "StopRequest", "position"]

SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopRequest:
    """While entered (``with StopRequest() as stop:``), SIGINT and SIGTERM set :attr:`signal` instead of
    interrupting; a second one ends the process at once (exit status 128 + its number). Outside the main thread,
    where signal handlers cannot be set, it does nothing."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the first signal received
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """The exit status of a process ended by the signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.signal)

    @property
    def name(self) -> str:
        return SIGNAL_NAMES.get(self.signal, f"signal {self.signal}")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_NAMES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _handle(self, signum: int, frame) -> None:
        # os.write, not print: the handler may run while the program is in the middle of a print to the same
        # stream (the progress bar's), and a buffered stream refuses a reentrant call
        if self.signal is not None:
            name = SIGNAL_NAMES.get(signum, "signal")
            os.write(2, f"\n{name} again: aborted; the last checkpoint on the disk is whole\n".encode())
            os._exit(128 + signum)
        self.signal = signum
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        os.write(2, f"\n{self.name}: stopping after the current step ({again} aborts at once)\n".encode())


def position(run) -> str:
    """Where ``run`` (a :class:`~napari_semiamort.run.Reconstruction`) stands, in words: "12 steps into epoch 3
    of 10", "after epoch 3 of 10"; in the restarts, the restart's epoch."""
    p, of = run.progress, (f"of {run.end_epoch}" if run.trial is None else f"of restart {run.trial + 1}")
    if p is None:
        return f"after epoch {run.epoch} {of}"
    return f"{p.done} step{'s' if p.done != 1 else ''} into epoch {p.epoch + 1} {of}"
