"""Moves accepted leads from the journal into the warehouse, in the background.

Woken as soon as a request is accepted, and every ``idle_s`` in any case (a lead accepted just
before a restart is landed by the next process). Each batch is landed exactly once by
``land_from_journal``; a warehouse held by a Dagster run only delays it. What follows landing
(``then``: the write-back, which waits on the provider) runs on a thread of its own, woken after
each landing, so a slow provider never holds up landing. Leads a caller waits for go to
``on_request`` as well, as soon as they are journaled, to be answered without waiting for both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from enrich_pipeline.intake.journal import Journal
from enrich_pipeline.intake.landing import LandingReport, land_from_journal
from enrich_pipeline.intake.worker import BackgroundWorker
from enrich_pipeline.warehouse.connection import WarehouseBusy, hold_open

log = logging.getLogger(__name__)

# Short enough that a request is never blocked waiting on it: a busy warehouse is simply tried
# again on the next wake.
LOCK_WAIT_S = 2.0
# How long landing keeps the warehouse open for the write-back after it, and at most.
HOLD_LINGER_S = 0.5
HOLD_MAX_S = 2.0

# Landing (and the write-back pass after it) costs about the same for one lead as for hundreds,
# its statements' planning: under a stream of leads, one landing at most this often takes all
# that arrived meanwhile, instead of one per lead taking the CPU from answers and requests. A
# lead arriving alone is landed at once.
LANDING_INTERVAL_S = 0.5

# Journaled leads, each with the moment it was received (naive UTC).
ReceivedLeads = Sequence[tuple[Mapping[str, Any], datetime]]


class JournalMover:
    def __init__(
        self,
        journal: Journal,
        warehouse_path: str | Path,
        *,
        idle_s: float = 1.0,
        on_landed: Callable[[LandingReport], None] | None = None,
        then: Callable[[], None] | None = None,
        on_request: Callable[[ReceivedLeads], None] | None = None,
        give_way: Callable[[], None] | None = None,
    ) -> None:
        """``give_way`` is called before each landing and write-back pass: it may wait a
        moment for answers ``on_request`` is working on."""
        self._journal = journal
        self._on_request = on_request
        self._give_way = give_way
        self._on_landed = on_landed
        self._then = then
        self._warehouse_path = warehouse_path
        self._worker = BackgroundWorker(
            "journal-mover", self._pass, idle_s=idle_s, min_interval_s=LANDING_INTERVAL_S
        )
        self._follower = (
            None if then is None else BackgroundWorker("write-back", self._follow, idle_s=idle_s)
        )
        self._landed_through = 0
        # Journal position whose leads have been landed and then passed to ``then``.
        self._done_through = 0
        self._done = threading.Condition()
        self._done_listeners: list[Callable[[], None]] = []
        self._last_error: str | None = None

    def start(self) -> None:
        self._worker.start()
        if self._follower is not None:
            self._follower.start()

    def stop(self) -> None:
        self._worker.stop()
        if self._follower is not None:
            self._follower.stop()

    def wake(self) -> None:
        self._worker.wake()

    def enrich_now(self, leads: ReceivedLeads) -> None:
        """Journaled leads a caller waits for: answered by ``on_request``, if there is one,
        besides being landed and written back as every lead is."""
        if self._on_request is not None:
            self._on_request(leads)

    @property
    def warehouse_path(self) -> str | Path:
        return self._warehouse_path

    def add_done_listener(self, listener: Callable[[], None]) -> None:
        """Called (on the mover's threads) whenever the done position or ``status()`` may
        have moved on."""
        self._done_listeners.append(listener)

    @property
    def done_through(self) -> int:
        """The journal position through which leads are landed and written back."""
        with self._done:
            return self._done_through

    def is_done(self, seq: int) -> bool:
        """Whether the lead at journal position ``seq`` has been landed and written back."""
        with self._done:
            return self._done_through >= seq

    def status(self) -> dict[str, Any]:
        return {"landed_through_seq": self._landed_through, "landing_error": self._last_error}

    def land_pending(self) -> int:
        """Land everything the journal holds now; returns how many entries were landed."""
        moved = 0
        # Landed through a position this process has seen: nothing to open the warehouse for.
        while self._journal.needs_landing(self._landed_through):
            # Held open a moment past the landing: the write-back that follows finds it open.
            with hold_open(
                self._warehouse_path,
                max_hold_s=HOLD_MAX_S,
                linger_s=0.0 if self._follower is None else HOLD_LINGER_S,
                lock_timeout_s=LOCK_WAIT_S,
            ):
                report: LandingReport = land_from_journal(
                    self._journal, self._warehouse_path, lock_timeout_s=LOCK_WAIT_S
                )
            self._landed_through = report.last_seq
            moved += report.entries
            if report.entries == 0:
                break
            if self._on_landed is not None:
                self._on_landed(report)
        return moved

    def _pass(self) -> None:
        """Land what the journal holds, then wake the write-back (or, without one, mark it
        done)."""
        try:
            if self._give_way is not None:
                self._give_way()
            self.land_pending()
            self._last_error = None
        # /healthz answers anyone: it says why leads wait, the log says the details.
        except WarehouseBusy as exc:
            self._last_error = "the warehouse is held by another process"
            log.info("warehouse busy, leads wait in the journal: %s", exc)
        except Exception as exc:
            # The leads are safe in the journal; say why they wait and try again later.
            self._last_error = f"landing failed ({type(exc).__name__}); see the service's log"
            log.exception("landing from the journal failed; the leads stay in the journal")
        if self._follower is None:
            self._mark_done(self._landed_through)
        else:
            self._tell_listeners()  # landed: status() has moved on
            self._follower.wake()

    def _follow(self) -> None:
        """Run ``then`` (which handles its own failures) over everything landed so far."""
        assert self._then is not None
        landed = self._landed_through
        if self._give_way is not None:
            self._give_way()
        self._then()
        self._mark_done(landed)

    def _mark_done(self, seq: int) -> None:
        with self._done:
            self._done_through = max(self._done_through, seq)
            self._done.notify_all()
        self._tell_listeners()

    def _tell_listeners(self) -> None:
        for listener in self._done_listeners:
            listener()
