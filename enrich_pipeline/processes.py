"""Which process holds something, told apart from a later process that reuses its pid, so
what a crashed process held can be taken over the moment it is gone."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

# Start times derive from the boot time, which the kernel gives in whole seconds and which moves
# when the clock is stepped (NTP); a pid reused this soon after its process started is unheard of.
_SAME_START_S = 5.0


@dataclass(frozen=True)
class ProcessId:
    pid: int
    started_at: float  # seconds since the epoch

    @classmethod
    def current(cls) -> ProcessId:
        return cls(os.getpid(), psutil.Process().create_time())

    def is_running(self) -> bool:
        """Alive on this machine: neither gone, nor a zombie its parent has not reaped yet, nor
        a newer process with the same pid."""
        try:
            started_at = _start_time(self.pid)
        except psutil.AccessDenied:
            return True
        return started_at is not None and abs(started_at - self.started_at) < _SAME_START_S


def started_by(pid: int, moment: float) -> bool:
    """Whether ``pid`` is a running process that had started by ``moment``: the one that did
    something then, not a newer process given its pid."""
    try:
        started_at = _start_time(pid)
    except psutil.AccessDenied:
        return True
    return started_at is not None and started_at <= moment + _SAME_START_S


def _start_time(pid: int) -> float | None:
    """When the running process ``pid`` started; None when there is none, or only a zombie
    its parent has not reaped yet. ``AccessDenied`` (another user's process, on some systems)
    propagates: the process exists, which is all that can be known."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
