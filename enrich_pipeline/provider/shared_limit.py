"""One rate-limit budget per API key across processes on this machine.

A sensor-triggered run, a backfill and a scheduled refresh may call the provider with the same
key at the same time. Each keeps its pacing state in one small JSON file per key, locked with
``fcntl.flock`` for every read-modify-write, so together they draw from one token bucket, see
one ``Remaining``, one ``Retry-After`` and every process's requests in flight.

The file is named by a hash of the base URL and the key, never the key itself. It is a cache:
unreadable content starts afresh, and a crashed process's in-flight count expires. Processes on
other machines are not covered (flock is local): with a Postgres warehouse the budget lives in it
instead (``shared_limit_postgres``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from enrich_pipeline.provider.pacing import PacingState

# Longer than any one attempt can take (the default request timeout is 30 s).
DEFAULT_IN_FLIGHT_TTL_S = 120.0
_MAX_STATE_BYTES = 1 << 20


def state_key(base_url: str, api_key: str) -> str:
    """A stable file name for one key at one provider that reveals neither."""
    digest = hashlib.sha256(f"{base_url.rstrip('/')}\0{api_key}".encode())
    return digest.hexdigest()[:32]


def load_state(raw: str | bytes) -> PacingState:
    """The state as stored; empty or unreadable content starts afresh (the store is a cache)."""
    if not raw:
        return PacingState()
    try:
        return PacingState.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError):
        # Half-written by a process that died mid-write to a file, or an older format.
        return PacingState()


def dump_state(state: PacingState) -> str:
    return json.dumps(state.to_json(), separators=(",", ":"))


class SharedStateStore:
    """A ``StateStore`` in a locked file shared by every process using the same key."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        directory: str | os.PathLike[str],
        in_flight_ttl_s: float = DEFAULT_IN_FLIGHT_TTL_S,
    ) -> None:
        root = Path(directory).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{state_key(base_url, api_key)}.json"
        # Unique per store, so two clients in one process count their requests apart.
        self.owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._ttl_s = in_flight_ttl_s
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def transaction(self, now: float) -> Iterator[PacingState]:
        """The current state, locked against every other process until the block ends; written
        back only if the block completes."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            state = self._load()
            state.expire(now, self._ttl_s, keep=self.owner)
            yield state
            self._save(state)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _load(self) -> PacingState:
        return load_state(os.pread(self._fd, _MAX_STATE_BYTES, 0))

    def _save(self, state: PacingState) -> None:
        data = dump_state(state).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
