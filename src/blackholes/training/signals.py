"""Stop a run at a step boundary on Ctrl-C, SIGTERM (a scheduler's stop) or SIGHUP (a closed terminal).

Inside ``with StopOnSignal() as stop:`` the three signals only *ask* to stop: the
training loop checks :attr:`StopOnSignal.requested` after each step, so the steps done
are kept as a valid recording. A second signal stops at once (``KeyboardInterrupt``),
for a run stuck inside a step. Handlers are installed only in the main thread (a
worker thread cannot have them; there the process's own handling stays) and the
previous ones are restored on exit. A signal that arrived after the last step, which
the loop never saw, is delivered again on exit, to the handler that was there before.

>>> with StopOnSignal() as stop:
...     stop.requested
False
"""

from __future__ import annotations

import signal
import threading

SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s)


class StopOnSignal:
    """Context manager: the signals in :data:`SIGNALS` set :attr:`received` instead of stopping the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.consumed = False  # set by the loop once it has stopped because of the signal
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str | None:
        """``"SIGTERM"``-style name of the signal received (None if none)."""
        return None if self.received is None else signal.Signals(self.received).name

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # asked twice: stop now, mid-step
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, old in self._previous.items():
            if old is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(sig, old)
        self._previous = {}
        if self.received is not None and not self.consumed and exc_type is None:
            signal.raise_signal(self.received)  # arrived too late for the loop: let it act now
