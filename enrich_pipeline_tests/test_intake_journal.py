from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from enrich_pipeline.intake.journal import Accepted, IdempotencyConflict, IntakeJournal

NOW = datetime(2026, 9, 1, 12, 0, 0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "intake" / "journal.sqlite"


@pytest.fixture
def journal(path: Path) -> Iterator[IntakeJournal]:
    journal = IntakeJournal(path)
    yield journal
    journal.close()


def test_append_then_read_in_sequence_order(journal: IntakeJournal) -> None:
    assert journal.last_seq() == 0
    first = journal.append(
        [{"email": "a@x.com"}, {"Email": "b@x.com", "n": 1}], source="form", received_at=NOW
    )
    second = journal.append([{"phone": None}], source="api", received_at=NOW + timedelta(1))

    assert first == Accepted(first_seq=1, last_seq=2, count=2, replayed=False)
    assert second == Accepted(first_seq=3, last_seq=3, count=1, replayed=False)
    entries = journal.read_after(0, 10)
    assert [(e.seq, e.source, e.lead) for e in entries] == [
        (1, "form", {"email": "a@x.com"}),
        (2, "form", {"Email": "b@x.com", "n": 1}),
        (3, "api", {"phone": None}),
    ]
    assert entries[2].received_at == NOW + timedelta(1)
    assert [e.seq for e in journal.read_after(1, 1)] == [2]
    assert journal.read_after(3, 10) == []
    assert journal.last_seq() == 3


def test_received_at_is_stored_as_naive_utc(journal: IntakeJournal) -> None:
    paris = timezone(timedelta(hours=2))
    journal.append([{"email": "a@x.com"}], source="form", received_at=NOW.replace(tzinfo=paris))
    [entry] = journal.read_after(0, 1)
    assert entry.received_at == NOW - timedelta(hours=2)
    assert entry.received_at.tzinfo is None


def test_an_empty_request_is_refused(journal: IntakeJournal) -> None:
    with pytest.raises(ValueError, match="at least one lead"):
        journal.append([], source="form", received_at=NOW)


def test_entries_and_id_survive_reopening(path: Path) -> None:
    journal = IntakeJournal(path)
    journal_id = journal.journal_id
    journal.append([{"email": "a@x.com"}], source="form", received_at=NOW)
    journal.close()

    reopened = IntakeJournal(path)
    try:
        assert reopened.journal_id == journal_id
        assert [e.lead for e in reopened.read_after(0, 10)] == [{"email": "a@x.com"}]
        assert (
            reopened.append([{"email": "b@x.com"}], source="form", received_at=NOW).first_seq == 2
        )
    finally:
        reopened.close()
    assert IntakeJournal(path.with_name("other.sqlite")).journal_id != journal_id


def test_a_replayed_key_returns_the_first_answer_and_writes_nothing(
    journal: IntakeJournal,
) -> None:
    leads = [{"email": "a@x.com", "first_name": "Ann"}, {"email": "b@x.com"}]
    first = journal.append(leads, source="form", received_at=NOW, idempotency_key="k1")
    # Same body, keys in another order, later: still the same request.
    reordered = [{"first_name": "Ann", "email": "a@x.com"}, {"email": "b@x.com"}]
    again = journal.append(
        reordered, source="form", received_at=NOW + timedelta(1), idempotency_key="k1"
    )

    assert again == Accepted(first.first_seq, first.last_seq, first.count, replayed=True)
    assert journal.last_seq() == 2
    assert len(journal.read_after(0, 10)) == 2


def test_a_key_reused_for_another_body_conflicts(journal: IntakeJournal) -> None:
    journal.append([{"email": "a@x.com"}], source="form", received_at=NOW, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        journal.append([{"email": "b@x.com"}], source="form", received_at=NOW, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        journal.append([{"email": "a@x.com"}], source="api", received_at=NOW, idempotency_key="k")
    assert journal.last_seq() == 1


def test_concurrent_appends_get_contiguous_ranges(path: Path, journal: IntakeJournal) -> None:
    threads, requests, per_request = 8, 50, 3
    # A second connection to the same file stands in for another process.
    other = IntakeJournal(path)
    start = threading.Barrier(threads)
    answers: dict[tuple[int, int], Accepted] = {}

    def client(t: int) -> None:
        target = other if t % 2 else journal
        start.wait()
        for r in range(requests):
            leads = [{"email": f"{t}-{r}-{i}@x.com"} for i in range(per_request)]
            answers[t, r] = target.append(leads, source="form", received_at=NOW)

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    other.close()

    total = threads * requests * per_request
    entries = journal.read_after(0, total + 1)
    assert [e.seq for e in entries] == list(range(1, total + 1))
    by_seq = {e.seq: e.lead["email"] for e in entries}
    for (t, r), accepted in answers.items():
        assert accepted.count == per_request
        assert accepted.last_seq - accepted.first_seq == per_request - 1
        assert [by_seq[s] for s in range(accepted.first_seq, accepted.last_seq + 1)] == [
            f"{t}-{r}-{i}@x.com" for i in range(per_request)
        ]


def test_a_key_conflict_fails_only_its_own_caller_among_concurrent_appends(
    journal: IntakeJournal,
) -> None:
    threads = 12
    start = threading.Barrier(threads)
    outcomes: dict[int, Accepted | Exception] = {}

    def client(t: int) -> None:
        # Threads 0 and 1 send different bodies under one key: whichever commits first wins.
        key = "shared" if t < 2 else f"key-{t}"
        start.wait()
        try:
            outcomes[t] = journal.append(
                [{"email": f"{t}@x.com"}], source="form", received_at=NOW, idempotency_key=key
            )
        except IdempotencyConflict as exc:
            outcomes[t] = exc

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    conflicts = [t for t, outcome in outcomes.items() if isinstance(outcome, Exception)]
    assert len(conflicts) == 1 and conflicts[0] in (0, 1)
    assert journal.last_seq() == threads - 1
    landed = {e.lead["email"] for e in journal.read_after(0, threads)}
    assert landed == {f"{t}@x.com" for t in range(threads) if t != conflicts[0]}


def test_appends_in_one_turn_of_an_event_loop_get_their_own_ranges_and_conflicts(
    journal: IntakeJournal,
) -> None:
    requests: list[tuple[str, str | None]] = [
        ("a", None),
        ("b", "key-b"),
        ("c", "key-c"),
        ("c", "key-c"),  # the same body again: a replay of the request before
        ("d", "key-c"),  # another body under that key: its caller alone is refused
        ("e", None),
    ]

    async def send_all() -> list[Accepted | BaseException]:
        return await asyncio.gather(
            *(
                journal.append_async(
                    [{"email": f"{name}1@x.com"}, {"email": f"{name}2@x.com"}],
                    source="api",
                    received_at=NOW,
                    idempotency_key=key,
                )
                for name, key in requests
            ),
            return_exceptions=True,
        )

    a, b, c, c_again, d, e = asyncio.run(send_all())
    assert isinstance(d, IdempotencyConflict)
    assert [a, b, c, c_again, e] == [
        Accepted(1, 2, 2, replayed=False),
        Accepted(3, 4, 2, replayed=False),
        Accepted(5, 6, 2, replayed=False),
        Accepted(5, 6, 2, replayed=True),
        Accepted(7, 8, 2, replayed=False),
    ]
    assert [entry.lead["email"] for entry in journal.read_after(0, 10)] == [
        f"{name}{i}@x.com" for name in "abce" for i in (1, 2)
    ]
