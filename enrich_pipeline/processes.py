"""Which process holds something, told apart from a later process that reuses its pid, so
what a crashed process held can be taken over the moment it is gone."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

# Start times are read from the kernel at tick resolution; a reused pid starts later than this.
_SAME_START_S = 0.5


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
            process = psutil.Process(self.pid)
            return (
                abs(process.create_time() - self.started_at) < _SAME_START_S
                and process.status() != psutil.STATUS_ZOMBIE
            )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            # Another user's process: it exists, which is all that can be known.
            return True
