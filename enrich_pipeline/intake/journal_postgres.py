"""The intake journal in the warehouse's Postgres database, one for every intake replica.

Behind a load balancer, a client's retry (or HubSpot's redelivery) may reach another replica
than its first attempt did. Idempotency keys are rows here, under a primary key: whichever
replica commits a key first has its request accepted, every other request under that key hears
that first answer (or a conflict, for another body), from any replica.

Sequence numbers: each commit group draws one block of consecutive numbers from a Postgres
sequence before the transaction that writes it, so a request's leads are numbered
consecutively, but numbers become visible out of order: a replica may commit seq 10 after
another replica's seq 11 has been landed. A watermark would skip 10 for good, so there is none:
an entry is marked landed (``landed_at``) in the very warehouse transaction that lands it (the
journal and the warehouse are one database), and a landing takes what is not marked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from enrich_pipeline.intake.journal import (
    Accepted,
    AppendRequest,
    Journal,
    JournalEntry,
    replay,
)
from enrich_pipeline.intake.postgres_session import SharedSession, create_once, transaction
from enrich_pipeline.warehouse import postgres

# As the file's busy timeout: long enough to ride out another replica's commit, short enough
# to answer a client.
_LOCK_TIMEOUT_S = 5.0
# A fixed number: the advisory lock that drawing seqs takes.
_DRAW_LOCK = 0x696E74616B6532  # "intake2"
# Entries read per statement when an erasure looks through the whole journal.
_ERASE_PAGE = 10_000

_SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS intake_journal_seq;
CREATE TABLE IF NOT EXISTS intake_journal (
    seq          BIGINT PRIMARY KEY,
    received_at  TIMESTAMP NOT NULL,  -- naive UTC
    source       TEXT NOT NULL,
    lead         TEXT NOT NULL,       -- JSON object, exactly as accepted
    landed_at    TIMESTAMP            -- set by the warehouse transaction that landed it
);
-- What landing looks for is the few entries not landed yet, never the whole journal.
CREATE INDEX IF NOT EXISTS intake_journal_unlanded ON intake_journal (seq)
    WHERE landed_at IS NULL;
CREATE TABLE IF NOT EXISTS intake_idempotency_keys (
    key           TEXT PRIMARY KEY,
    request_hash  TEXT NOT NULL,
    first_seq     BIGINT NOT NULL,
    last_seq      BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS intake_journal_meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

# The position through which everything visible is landed: below the first entry not landed,
# else the last entry.
_LANDED_THROUGH = (
    "SELECT coalesce((SELECT min(seq) FROM intake_journal WHERE landed_at IS NULL) - 1, "
    "(SELECT max(seq) FROM intake_journal), 0)"
)

# (request hash, first seq, last seq) under which a key was first accepted.
_FirstAnswer = tuple[str, int, int]


class PostgresJournal(Journal):
    """A ``Journal`` whose commits are Postgres transactions on one connection per process;
    see the module's description."""

    commits_on_loop = False

    def __init__(self, location: str | Path) -> None:
        super().__init__()
        self._session = SharedSession(location, lock_timeout_s=_LOCK_TIMEOUT_S)
        create_once(self._session, "intake_journal_meta", _SCHEMA)
        with self._session.cursor() as cur:
            # The first replica to get here names the journal.
            cur.execute(
                "INSERT INTO intake_journal_meta (key, value) VALUES ('journal_id', %s) "
                "ON CONFLICT (key) DO NOTHING",
                (uuid.uuid4().hex,),
            )
            cur.execute("SELECT value FROM intake_journal_meta WHERE key = 'journal_id'")
            self._journal_id = str(cur.fetchone()[0])

    @property
    def journal_id(self) -> str:
        return self._journal_id

    def _commit(self, group: Sequence[AppendRequest]) -> list[Accepted | BaseException]:
        with self._session.cursor() as cur:
            # Keys any replica committed before: their requests write nothing, need no seqs.
            first = _first_answers(cur, [request.idempotency_key for request in group])
            writing: list[int] = []  # indexes in ``group`` of the requests that write
            writer: dict[str, int] = {}  # key -> the request of this group that writes it
            for index, request in enumerate(group):
                key = request.idempotency_key
                if key is None or (key not in first and key not in writer):
                    writing.append(index)
                    if key is not None:
                        writer[key] = index
            seqs: dict[int, tuple[int, int]] = {}  # index -> its first and last seq
            if writing:
                next_seq = _draw(cur, sum(len(group[index].texts) for index in writing))
                for index in writing:
                    seqs[index] = (next_seq, next_seq + len(group[index].texts) - 1)
                    next_seq += len(group[index].texts)
                claimed: dict[str, _FirstAnswer] = {}
                for key, index in writer.items():
                    request_hash = group[index].request_hash
                    assert request_hash is not None  # given with every key
                    claimed[key] = (request_hash, *seqs[index])
                with transaction(cur):
                    lost = _claim(cur, claimed)
                    if lost:
                        # Another replica committed these keys since we looked: its answers
                        # stand, and the seqs drawn for ours are left unused.
                        first.update(_first_answers(cur, lost))
                        for key in lost:
                            del seqs[writer[key]], claimed[key]
                    _insert(cur, [(group[index], seqs[index][0]) for index in seqs])
                first.update(claimed)
        outcomes: list[Accepted | BaseException] = []
        for index, request in enumerate(group):
            if index in seqs:
                first_seq, last_seq = seqs[index]
                outcomes.append(Accepted(first_seq, last_seq, len(request.texts), replayed=False))
            else:
                assert request.idempotency_key is not None
                outcomes.append(replay(request, *first[request.idempotency_key]))
        return outcomes

    def read_after(self, seq: int, limit: int) -> list[JournalEntry]:
        with self._session.cursor() as cur:
            cur.execute(
                "SELECT seq, received_at, source, lead FROM intake_journal WHERE seq > %s "
                "ORDER BY seq LIMIT %s",
                (seq, limit),
            )
            return _entries(cur.fetchall())

    def erase(self, is_theirs: Callable[[dict[str, Any]], bool]) -> tuple[int, bool]:
        theirs: list[int] = []
        after = 0
        # A page at a time: the journal of every replica may be large.
        while True:
            with self._session.cursor() as cur:
                cur.execute(
                    "SELECT seq, lead FROM intake_journal WHERE seq > %s ORDER BY seq LIMIT %s",
                    (after, _ERASE_PAGE),
                )
                rows = cur.fetchall()
            if not rows:
                break
            theirs += [seq for seq, lead in rows if is_theirs(json.loads(lead))]
            after = rows[-1][0]
        return len(theirs), self.erase_entries(theirs)

    def erase_entries(self, seqs: Sequence[int]) -> bool:
        """Deleted, then the table written anew (VACUUM FULL, as an erasure does to the
        warehouse's tables), so that their bytes leave its files."""
        if not seqs:
            return True
        with self._session.cursor() as cur:
            cur.execute("DELETE FROM intake_journal WHERE seq = ANY(%s)", (list(seqs),))
        postgres.vacuum_full(self._session.location, ["intake_journal"])
        return True

    def leads_under_key(self, prefix: str) -> list[dict[str, Any]]:
        with self._session.cursor() as cur:
            cur.execute(
                "SELECT e.lead FROM intake_idempotency_keys k "
                "JOIN intake_journal e ON e.seq BETWEEN k.first_seq AND k.last_seq "
                "WHERE starts_with(k.key, %s) ORDER BY e.seq",
                (prefix,),
            )
            return [json.loads(lead) for (lead,) in cur.fetchall()]

    def last_seq(self) -> int:
        with self._session.cursor() as cur:
            cur.execute("SELECT coalesce(max(seq), 0) FROM intake_journal")
            return int(cur.fetchone()[0])

    def close(self) -> None:
        self._session.close()

    # Landing: ``con`` is a DuckDB connection to this same database, in the transaction that
    # lands the entries; these run natively there (``postgres_query``/``postgres_execute``), so
    # they use the partial index rather than copying the journal into DuckDB.

    def needs_landing(self, landed_through: int) -> bool:
        # Besides entries not landed: entries another replica's mover landed that this mover
        # has not seen, so that its position (healthz, waiting callers) catches up.
        with self._session.cursor() as cur:
            cur.execute(
                "SELECT EXISTS (SELECT FROM intake_journal WHERE landed_at IS NULL) "
                "OR coalesce((SELECT max(seq) FROM intake_journal), 0) > %s",
                (landed_through,),
            )
            return bool(cur.fetchone()[0])

    def unlanded(self, con: duckdb.DuckDBPyConnection, limit: int) -> list[JournalEntry]:
        rows = con.execute(
            "SELECT * FROM postgres_query(?, ?)",
            [
                postgres.CATALOG,
                "SELECT seq, received_at, source, lead FROM intake_journal "
                f"WHERE landed_at IS NULL ORDER BY seq LIMIT {int(limit)}",
            ],
        ).fetchall()
        return _entries(rows)

    def mark_landed(
        self, con: duckdb.DuckDBPyConnection, entries: Sequence[JournalEntry], landed_at: datetime
    ) -> None:
        # Exactly once whatever the isolation level: an entry another landing marked (or an
        # erasure deleted) since ``unlanded`` read it is not updated, and the count says so.
        seqs = ",".join(str(int(entry.seq)) for entry in entries)
        statement = f"""DO $$
DECLARE marked bigint;
BEGIN
    UPDATE intake_journal SET landed_at = TIMESTAMP '{landed_at.isoformat()}'
    WHERE seq = ANY('{{{seqs}}}'::bigint[]) AND landed_at IS NULL;
    GET DIAGNOSTICS marked = ROW_COUNT;
    IF marked <> {len(entries)} THEN
        RAISE EXCEPTION 'intake journal: % of % entries were landed or erased meanwhile',
            {len(entries)} - marked, {len(entries)};
    END IF;
END $$"""
        con.execute("CALL postgres_execute(?, ?)", [postgres.CATALOG, statement])

    def landed_through(self, con: duckdb.DuckDBPyConnection) -> int:
        row = con.execute(
            "SELECT * FROM postgres_query(?, ?)", [postgres.CATALOG, _LANDED_THROUGH]
        ).fetchone()
        assert row is not None
        return int(row[0])


def _first_answers(cur: Any, keys: Iterable[str | None]) -> dict[str, _FirstAnswer]:
    wanted = sorted({key for key in keys if key is not None})
    if not wanted:
        return {}
    cur.execute(
        "SELECT key, request_hash, first_seq, last_seq FROM intake_idempotency_keys "
        "WHERE key = ANY(%s)",
        (wanted,),
    )
    return {key: (request_hash, first, last) for key, request_hash, first, last in cur}


def _draw(cur: Any, count: int) -> int:
    """The first of ``count`` consecutive seqs no one else is given. ``nextval`` then
    ``setval`` are two steps: the lock, taken before them (``OFFSET 0`` keeps the subquery a
    step of its own) and released as this one-statement transaction ends, keeps another
    replica's draw from falling between them. A sequence is not transactional: seqs drawn for
    a commit that then fails are simply never used."""
    cur.execute(
        "SELECT setval('intake_journal_seq', nextval('intake_journal_seq') + %s - 1) "
        "FROM (SELECT pg_advisory_xact_lock(%s) OFFSET 0) AS drawing",
        (count, _DRAW_LOCK),
    )
    return int(cur.fetchone()[0]) - count + 1


def _claim(cur: Any, keys: dict[str, _FirstAnswer]) -> set[str]:
    """Insert these keys' first answers; returns the keys another replica holds already (its
    transaction, if still open, is waited for). In key order, so two replicas claiming the same
    keys wait on each other in one order and never deadlock."""
    if not keys:
        return set()
    ordered = sorted(keys)
    cur.execute(
        "INSERT INTO intake_idempotency_keys (key, request_hash, first_seq, last_seq) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[]) "
        "ON CONFLICT (key) DO NOTHING RETURNING key",
        (
            ordered,
            [keys[key][0] for key in ordered],
            [keys[key][1] for key in ordered],
            [keys[key][2] for key in ordered],
        ),
    )
    return set(ordered) - {key for (key,) in cur.fetchall()}


def _insert(cur: Any, requests: Sequence[tuple[AppendRequest, int]]) -> None:
    """The leads of ``requests``, each request's from its first seq on."""
    rows = [
        (first_seq + i, request.received_at, request.source, text)
        for request, first_seq in requests
        for i, text in enumerate(request.texts)
    ]
    if not rows:
        return
    seqs, received, sources, leads = (list(column) for column in zip(*rows, strict=True))
    cur.execute(
        "INSERT INTO intake_journal (seq, received_at, source, lead) "
        "SELECT * FROM unnest(%s::bigint[], %s::timestamp[], %s::text[], %s::text[])",
        (seqs, received, sources, leads),
    )


def _entries(rows: Iterable[tuple[Any, ...]]) -> list[JournalEntry]:
    return [
        JournalEntry(int(seq), received_at, source, json.loads(lead))
        for seq, received_at, source, lead in rows
    ]
