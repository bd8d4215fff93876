"""Look-ups being made right now in this process, so that no two of its paths pay for the
same record at once: the intake's answer-now look-ups and the write-back's passes claim what
they look up, and wait for what another holds instead of asking the provider again."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable

from enrich_pipeline.provider.models import Kind

Key = tuple[Kind, str]  # ("person", identity) or ("company", domain)

# Another path's look-up is waited for this long (a slow provider, retrying), then left to it.
WAIT_S = 30.0


class InFlight:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._claimed: set[Key] = set()

    def claim(self, keys: Iterable[Key]) -> set[Key]:
        """Claim those of ``keys`` nobody holds; returns them (the caller must release them)."""
        with self._changed:
            mine = set(keys) - self._claimed
            self._claimed |= mine
            return mine

    def release(self, keys: Collection[Key]) -> None:
        if keys:
            with self._changed:
                self._claimed -= set(keys)
                self._changed.notify_all()

    def wait(self, keys: Collection[Key], timeout_s: float = WAIT_S) -> bool:
        """Wait until nobody holds any of ``keys`` (at most ``timeout_s``); returns whether
        anybody did, so the caller knows to look again at what is stored."""
        wanted = set(keys)
        with self._changed:
            if not self._claimed & wanted:
                return False
            self._changed.wait_for(lambda: not self._claimed & wanted, timeout_s)
            return True
