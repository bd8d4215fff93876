"""A background pass that runs when woken, and every ``idle_s`` anyway: the journal mover and
the HubSpot read-back each run one, so a request only stores and wakes, never waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class BackgroundWorker:
    def __init__(
        self, name: str, work: Callable[[], None], *, idle_s: float, min_interval_s: float = 0.0
    ) -> None:
        """``min_interval_s``: passes start at least this far apart; wakes meanwhile make one."""
        self._name = name
        self._work = work
        self._idle_s = idle_s
        self._min_interval_s = min_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        # What an earlier process stored but did not finish goes first.
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._idle_s)
            self._wake.clear()
            started = time.monotonic()
            self._work()
            self._stop.wait(self._min_interval_s - (time.monotonic() - started))
