"""The journal mover, and the write-back after it, in a process of their own.

Landing, enriching and merging hold Python's GIL for tens of milliseconds at a time; in the
process that accepts leads, every such stretch is a pause in answering them. In a child process
they cost the acceptor only a share of the CPU. The two talk over a pipe: the acceptor says
"there is more in the journal" and which emails callers wait for; the child says how far it has
landed and written back, and hands over the merged records callers wait for.

The child ends when the pipe does: when the acceptor stops, or is killed (``kill -9``), it
stops after its current step. What it was doing is safe either way: landing is exactly once by
what the landing's own transaction records, and the next process (or replica) picks up from there.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb

from enrich_pipeline.intake.enrich_now import ReadyRecords
from enrich_pipeline.intake.mover import JournalMover, ReceivedLeads
from enrich_pipeline.warehouse.crm import crm_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Publish:
    """How the child's mover hands records to the callers waiting for them."""

    # From the write-back's connection, right after its merge.
    merged: Callable[[duckdb.DuckDBPyConnection], None]
    # Records computed for callers who wait (``EnrichOnRequest``), by email.
    records: Callable[[Mapping[str, dict[str, Any]]], None]


# How the child builds its mover: a module-level function (the child imports it by name).
MoverFactory = Callable[[Publish], JournalMover]

# The child gives its current step this long to finish when told to stop or left alone; the
# acceptor waits a little longer before terminating it.
CHILD_STOP_S = 5.0
STOP_WAIT_S = CHILD_STOP_S + 2.0
CHILD_NICENESS = 10
START_WAIT_S = 60.0


class MoverProcess:
    """What the intake app needs of a ``JournalMover`` (wake it, how far it is done, its
    status), with the mover running in a child process built by ``factory``. Records the
    write-back merges for waiting callers arrive in ``ready``."""

    def __init__(
        self, factory: MoverFactory, warehouse_path: str | Path, ready: ReadyRecords
    ) -> None:
        self._factory = factory
        self._warehouse_path = warehouse_path
        self._ready = ready
        ready.on_wanted(self._send_wanted)
        # Messages go out from a thread of their own, in order: a write to the pipe blocks while
        # the child is not reading (it is starting up), and that must never be the event loop.
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        # A wake the child has not reported a pass since, and whether one was asked for
        # meanwhile: one wake per pass of the child's, however many requests arrive.
        self._wakes = threading.Lock()
        self._wake_unanswered = False
        self._wake_owed = False
        self._sender: threading.Thread | None = None
        self._started = threading.Event()
        self._state = threading.Condition()
        self._done_through = 0
        self._status: dict[str, Any] = {"landed_through_seq": 0, "landing_error": None}
        self._done_listeners: list[Callable[[], None]] = []
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._reader: threading.Thread | None = None

    @property
    def warehouse_path(self) -> str | Path:
        return self._warehouse_path

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=_run_child, args=(child_end, self._factory), name="intake-mover", daemon=True
        )
        self._process.start()
        child_end.close()
        self._reader = threading.Thread(target=self._read, name="mover-messages", daemon=True)
        self._reader.start()
        self._sender = threading.Thread(target=self._send_all, name="mover-outbox", daemon=True)
        self._sender.start()
        # Ready means ready: the service answers its first request only once the child can
        # move it (Dagster's import alone takes seconds), not with a first wait that long.
        if not self._started.wait(START_WAIT_S):
            log.warning("the intake mover process is slow to start; leads wait in the journal")
        self._send_wanted(Counter(self._ready.wanted()))

    def stop(self) -> None:
        if self._process is None or self._conn is None:
            return
        self._send(("stop",))
        self._outbox.put(None)
        if self._sender is not None:
            self._sender.join()
        self._process.join(STOP_WAIT_S)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._conn.close()
        if self._reader is not None:
            self._reader.join()
        self._process = self._conn = self._reader = self._sender = None

    def wake(self) -> None:
        with self._wakes:
            if self._wake_unanswered:
                # Sent once the child reports its current pass, which may have read the journal
                # before this request's leads were in it.
                self._wake_owed = True
                return
            self._wake_unanswered = True
        self._send(("wake",))

    def enrich_now(self, leads: ReceivedLeads) -> None:
        self._send(("enrich_now", list(leads)))

    def add_done_listener(self, listener: Callable[[], None]) -> None:
        self._done_listeners.append(listener)

    def is_done(self, seq: int) -> bool:
        with self._state:
            return self._done_through >= seq

    def status(self) -> dict[str, Any]:
        with self._state:
            status = dict(self._status)
        if self._process is not None and not self._process.is_alive():
            status["landing_error"] = "the mover process has stopped; see the service's log"
        return status

    def _send_wanted(self, change: Counter[str]) -> None:
        if change:
            self._send(("wanted", dict(change)))

    def _send(self, message: tuple[Any, ...]) -> None:
        self._outbox.put(message)

    def _send_all(self) -> None:
        assert self._conn is not None
        gone = False
        while (message := self._outbox.get()) is not None:
            try:
                self._conn.send(message)
            except OSError:  # BrokenPipeError included
                # The child is gone; leads wait in the journal for the next process.
                if not gone:
                    log.error("the intake mover process has stopped; leads wait in the journal")
                gone = True

    def _read(self) -> None:
        assert self._conn is not None
        while True:
            try:
                kind, *body = self._conn.recv()
            except (EOFError, OSError):
                return
            if kind == "started":
                self._started.set()
            elif kind == "records":
                self._ready.publish(body[0])
            elif kind == "done":
                with self._state:
                    self._done_through, self._status = body
                for listener in self._done_listeners:
                    listener()
                with self._wakes:
                    self._wake_unanswered = False
                    owed, self._wake_owed = self._wake_owed, False
                if owed:
                    self.wake()


def _run_child(conn: Connection, factory: MoverFactory) -> None:
    # Behind the acceptor for the CPU: under a burst, answering comes first and the leads wait,
    # durable, in the journal; when the burst ends this process has the machine again.
    os.nice(CHILD_NICENESS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    send_lock = threading.Lock()
    wanted: Counter[str] = Counter()
    wanted_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        try:
            with send_lock:
                conn.send(message)
        except (BrokenPipeError, OSError):
            pass  # the acceptor is gone; the pipe's end stops this process

    def publish_merged(con: duckdb.DuckDBPyConnection) -> None:
        with wanted_lock:
            emails = list(wanted)
        if emails:
            send(("records", crm_records(con, emails)))

    def publish_records(records: Mapping[str, dict[str, Any]]) -> None:
        with wanted_lock:
            records = {email: record for email, record in records.items() if email in wanted}
        if records:
            send(("records", records))

    mover = factory(Publish(merged=publish_merged, records=publish_records))
    mover.add_done_listener(lambda: send(("done", mover.done_through, mover.status())))
    mover.start()
    send(("started",))
    try:
        while True:
            try:
                kind, *body = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "stop":
                return
            if kind == "wake":
                mover.wake()
            elif kind == "enrich_now":
                mover.enrich_now(body[0])
            elif kind == "wanted":
                with wanted_lock:
                    wanted.update(body[0])
                    for email in [email for email, n in wanted.items() if n <= 0]:
                        del wanted[email]
    finally:
        # A pass still waiting on the provider is given a moment, not the rest of its retries:
        # the acceptor is gone or going, and whatever the pass had not committed is redone by
        # the next process, as after a kill -9.
        stopping = threading.Thread(target=mover.stop, daemon=True)
        stopping.start()
        stopping.join(CHILD_STOP_S)
        logging.shutdown()
        os._exit(0)
