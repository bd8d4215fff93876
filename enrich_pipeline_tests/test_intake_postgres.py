"""The intake service on more than one machine: replicas that share nothing but the Postgres
warehouse, which holds the journal, its idempotency keys and HubSpot's events. A retry reaching
another replica is answered with the first answer, every lead lands once however the replicas'
appends and movers interleave, a replica killed before moving loses nothing, and an erasure
reaches the shared journal."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import duckdb
import httpx
import pytest
import respx

from enrich_pipeline.destinations.hubspot import HubSpotClient
from enrich_pipeline.forget import emails_for_hubspot_ids, forget
from enrich_pipeline.intake import journal_postgres
from enrich_pipeline.intake.app import create_intake_app
from enrich_pipeline.intake.hubspot_webhooks import HubSpotWebhookReceiver, events_location
from enrich_pipeline.intake.journal import (
    Accepted,
    IdempotencyConflict,
    Journal,
    journal_location,
    open_journal,
)
from enrich_pipeline.intake.mover import JournalMover
from enrich_pipeline.settings import Settings, WarehouseSettings
from enrich_pipeline.settings_base import env_name
from enrich_pipeline.warehouse.connection import connect
from enrich_pipeline.warehouse.postgres import session
from enrich_pipeline_tests.helpers import (
    READY_S,
    held_by_another_process,
    intake_environment,
    read_warehouse,
    release,
    serving,
    wait_for_health,
)
from enrich_pipeline_tests.test_intake_hubspot_webhooks import (
    ADA,
    HUBSPOT,
    INTAKE,
    NOW_S,
    READ_PATH,
    SECRET,
    created,
    hubspot_holding,
    signed,
)
from enrich_pipeline_tests.test_intake_service import _children, _running

pytestmark = pytest.mark.postgres

TOKEN = "intake-secret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 9, 1, 12, 0, 0)
ZENOBIA = "zenobia@quillfeather.example"


@dataclass
class Replica:
    """One intake replica, as another machine runs it: its own connection to the journal and
    its own mover (not started: tests land with ``land_pending`` unless they start it)."""

    journal: Journal
    mover: JournalMover

    def client(self) -> httpx.AsyncClient:
        app = create_intake_app(self.journal, token=TOKEN, mover=self.mover)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake")


@pytest.fixture
def database(postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test's Postgres database, as the warehouse every replica is configured with."""
    monkeypatch.setenv(env_name(WarehouseSettings, "warehouse_path"), postgres_database)
    return postgres_database


@pytest.fixture
def settings(database: str) -> Settings:
    return Settings()


@pytest.fixture
def replicas(settings: Settings) -> Iterator[tuple[Replica, Replica]]:
    journals = [open_journal(journal_location(settings)) for _ in range(2)]
    yield (
        Replica(journals[0], JournalMover(journals[0], settings.warehouse_path)),
        Replica(journals[1], JournalMover(journals[1], settings.warehouse_path)),
    )
    for journal in journals:
        journal.close()


def landed_emails(settings: Settings) -> Counter[str]:
    with read_warehouse(settings.warehouse_path) as con:
        return Counter(
            email for (email,) in con.execute("SELECT email FROM raw_contacts").fetchall()
        )


def land_everything(replica: Replica) -> None:
    while replica.mover.land_pending():
        pass


def test_with_a_postgres_warehouse_the_journal_is_in_it_one_for_every_replica(
    settings: Settings, database: str, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    assert journal_location(settings) == database
    assert not Path(settings.intake_journal_path).exists()
    assert a.journal.journal_id == b.journal.journal_id

    accepted = a.journal.append([{"email": "ada@acme.io"}], source="api", received_at=NOW)

    assert [(e.seq, e.lead) for e in b.journal.read_after(0, 10)] == [
        (accepted.first_seq, {"email": "ada@acme.io"})
    ]
    assert b.journal.last_seq() == accepted.last_seq


@pytest.mark.anyio
async def test_a_retry_that_reaches_the_other_replica_gets_the_first_answer(
    settings: Settings, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    lead = {"Email": "ada@analytical-engines.io", "First Name": "Ada"}
    headers = {**AUTH, "Idempotency-Key": "order-1"}
    async with a.client() as to_a, b.client() as to_b:
        first = await to_a.post("/v1/leads", json=lead, headers=headers)
        retried = await to_b.post("/v1/leads", json=lead, headers=headers)
        other_body = await to_b.post("/v1/leads", json={**lead, "First Name": "A"}, headers=headers)

    assert first.status_code == 202 and first.json()["replayed"] is False
    assert retried.status_code == 202
    assert retried.json() == {**first.json(), "replayed": True}
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert other_body.status_code == 422
    land_everything(a)
    land_everything(b)
    assert landed_emails(settings) == {"ada@analytical-engines.io": 1}


def test_a_key_sent_to_both_replicas_at_once_is_accepted_once(
    replicas: tuple[Replica, Replica],
) -> None:
    keys, clients = 40, 4
    start = threading.Barrier(clients)
    answers: dict[int, list[tuple[str, Accepted | IdempotencyConflict]]] = {
        k: [] for k in range(keys)
    }
    lock = threading.Lock()

    def client(t: int) -> None:
        journal = replicas[t % 2].journal
        start.wait()
        for k in range(keys):
            # Every third key comes to the second replica with another body: one body wins.
            email = f"k{k}-other@x.com" if k % 3 == 0 and t % 2 else f"k{k}@x.com"
            try:
                answer: Accepted | IdempotencyConflict = journal.append(
                    [{"email": email}], source="api", received_at=NOW, idempotency_key=f"key-{k}"
                )
            except IdempotencyConflict as exc:
                answer = exc
            with lock:
                answers[k].append((email, answer))

    workers = [threading.Thread(target=client, args=(t,)) for t in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    journaled = Counter(e.lead["email"] for e in replicas[0].journal.read_after(0, 10 * keys))
    assert sum(journaled.values()) == keys
    for k, given in answers.items():
        accepted = [(email, a) for email, a in given if isinstance(a, Accepted)]
        assert [a.replayed for _, a in accepted].count(False) == 1, f"key-{k}: {given}"
        (winner,) = {email for email, _ in accepted}
        assert journaled[winner] == 1
        assert len({(a.first_seq, a.last_seq) for _, a in accepted}) == 1
        # Whoever sent the other body heard a conflict, from either replica.
        assert all(isinstance(a, IdempotencyConflict) for email, a in given if email != winner)


def test_leads_taken_by_both_replicas_land_once_while_both_movers_run(
    settings: Settings, replicas: tuple[Replica, Replica]
) -> None:
    requests, clients = 30, 4
    start = threading.Barrier(clients)

    def client(t: int) -> None:
        replica = replicas[t % 2]
        start.wait()
        for r in range(requests):
            leads = [{"email": f"{t}-{r}-{i}@x.com"} for i in range(1 + r % 3)]
            replica.journal.append(leads, source="api", received_at=NOW)
            replica.mover.wake()

    for replica in replicas:
        replica.mover.start()
    try:
        workers = [threading.Thread(target=client, args=(t,)) for t in range(clients)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        for replica in replicas:
            replica.mover.stop()
    # Whatever the running movers had not landed when they stopped.
    land_everything(replicas[1])

    expected = {
        f"{t}-{r}-{i}@x.com"
        for t in range(clients)
        for r in range(requests)
        for i in range(1 + r % 3)
    }
    landed = landed_emails(settings)
    assert set(landed) == expected
    assert max(landed.values()) == 1, "a lead landed twice"
    journal = replicas[0].journal
    assert not journal.needs_landing(journal.last_seq())


def test_a_landing_that_another_replica_overtook_lands_nothing(
    settings: Settings, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    a.journal.append(
        [{"email": "ada@acme.io"}, {"email": "bo@acme.io"}], source="api", received_at=NOW
    )
    with connect(settings.warehouse_path) as con:
        con.execute("BEGIN TRANSACTION")
        taken = a.journal.unlanded(con, 10)
        assert len(taken) == 2
        # Meanwhile the other replica's mover lands the same entries and commits.
        assert b.mover.land_pending() == 2
        with pytest.raises(duckdb.Error, match=r"could not serialize|landed or erased meanwhile"):
            a.journal.mark_landed(con, taken, NOW)
        con.execute("ROLLBACK")
    assert a.mover.land_pending() == 0
    assert landed_emails(settings) == {"ada@acme.io": 1, "bo@acme.io": 1}


def test_an_entry_committed_after_a_later_one_was_landed_still_lands(
    settings: Settings, replicas: tuple[Replica, Replica], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    drawn, go = threading.Event(), threading.Event()
    insert = journal_postgres._insert

    def slow_insert(cur: Any, requests: Any) -> None:
        # Replica A has its seq and is about to write it, as a slow machine would be.
        if threading.current_thread().name == "slow-replica":
            drawn.set()
            assert go.wait(READY_S)
        insert(cur, requests)

    monkeypatch.setattr(journal_postgres, "_insert", slow_insert)
    early: list[Accepted] = []
    slow = threading.Thread(
        target=lambda: early.append(
            a.journal.append([{"email": "early@x.com"}], source="api", received_at=NOW)
        ),
        name="slow-replica",
    )
    slow.start()
    assert drawn.wait(READY_S)
    later = b.journal.append([{"email": "later@x.com"}], source="api", received_at=NOW)
    assert b.mover.land_pending() == 1
    go.set()
    slow.join()

    # Numbered before the landed one, committed after it: a watermark would skip it for good.
    assert early[0].last_seq < later.first_seq
    assert b.mover.land_pending() == 1
    assert landed_emails(settings) == {"early@x.com": 1, "later@x.com": 1}


@pytest.mark.slow
def test_a_lead_acknowledged_by_a_replica_killed_before_moving_is_landed_by_another(
    tmp_path: Path, settings: Settings, database: str
) -> None:
    """Two `enrich-pipeline serve` processes with state folders of their own, as on two
    machines. The first acknowledges leads while a Dagster run holds the warehouse, so its mover
    cannot land them, and is killed; the second lands them."""
    env_a, url_a = intake_environment(tmp_path / "a", warehouse_path=database, intake_token=TOKEN)
    env_b, url_b = intake_environment(tmp_path / "b", warehouse_path=database, intake_token=TOKEN)

    def post(base_url: str, i: int) -> httpx.Response:
        return httpx.post(
            f"{base_url}/v1/leads",
            json={"email": f"lead{i}@killed.example"},
            headers={**AUTH, "Idempotency-Key": f"lead-{i}"},
            timeout=10,
        )

    with held_by_another_process(database) as run:
        with serving(env_a, url_a) as replica_a:
            assert all(post(url_a, i).status_code == 202 for i in range(5))
            movers = _children(replica_a.pid)
            replica_a.kill()
        deadline = time.monotonic() + READY_S
        while any(_running(pid) for pid in movers):
            assert time.monotonic() < deadline, "the killed replica's mover lived on"
            time.sleep(0.05)
        release(run)

    with serving(env_b, url_b):
        retried = post(url_b, 0)
        assert retried.status_code == 202 and retried.json()["replayed"] is True
        wait_for_health(
            url_b,
            lambda health: health["journal_last_seq"] == 5 and health["landed_through_seq"] == 5,
        )
    assert landed_emails(settings) == {f"lead{i}@killed.example": 1 for i in range(5)}


def test_an_erasure_removes_their_leads_from_the_shared_journal_and_its_files(
    settings: Settings, database: str, replicas: tuple[Replica, Replica]
) -> None:
    a, b = replicas
    zenobia = {"email": ZENOBIA, "first_name": "Zenobia", "last_name": "Quillfeather"}
    a.journal.append([zenobia], source="form", received_at=NOW)
    land_everything(a)
    b.journal.append(
        [{"Email": ZENOBIA.upper()}, {"email": "ada@acme.io"}], source="form", received_at=NOW
    )
    with session(database, autocommit=True) as server, server.cursor() as cur:
        cur.execute("CHECKPOINT")  # what the journal holds is in its files now
        assert _files_holding(cur, b"Quillfeather")

        report = forget(settings, [ZENOBIA], crm=False)

        cur.execute("CHECKPOINT")
        assert _files_holding(cur, b"Quillfeather") == []
    assert report.journal_entries == 2
    assert [e.lead for e in b.journal.read_after(0, 10)] == [{"email": "ada@acme.io"}]
    land_everything(b)
    assert landed_emails(settings) == {"ada@acme.io": 1}


def test_a_hubspot_contact_id_finds_the_person_in_the_shared_journal(
    settings: Settings, replicas: tuple[Replica, Replica]
) -> None:
    replicas[0].journal.append(
        [{"email": ZENOBIA}], source="hubspot", received_at=NOW, idempotency_key="hubspot:555:1"
    )
    replicas[1].journal.append(
        [{"email": "ada@acme.io"}], source="hubspot", received_at=NOW, idempotency_key="hubspot:5:1"
    )
    assert emails_for_hubspot_ids(settings, ["555"]) == [ZENOBIA]


@pytest.mark.anyio
async def test_a_hubspot_event_delivered_to_both_replicas_is_stored_and_journaled_once(
    settings: Settings, database: str, replicas: tuple[Replica, Replica]
) -> None:
    hubspot = respx.MockRouter(base_url=HUBSPOT, assert_all_called=False)
    read = hubspot.post(READ_PATH).mock(side_effect=hubspot_holding({"101": ADA}))

    def client() -> HubSpotClient:
        return HubSpotClient(
            token="pat-test",
            base_url=HUBSPOT,
            transport=httpx.MockTransport(hubspot.async_handler),
            max_attempts=1,
        )

    receivers = [
        HubSpotWebhookReceiver(
            replica.journal,
            client_secret=SECRET,
            events_path=events_location(journal_location(settings)),
            hubspot=client,
            wake=replica.mover.wake,
            clock=lambda: NOW_S,
        )
        for replica in replicas
    ]
    body = json.dumps([created(101)]).encode()
    answers = []
    # HubSpot's retry of a delivery whose answer it missed, through the load balancer.
    for replica, receiver in zip(replicas, receivers, strict=True):
        app = create_intake_app(
            replica.journal, token=None, mover=replica.mover, receivers=[receiver]
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=INTAKE
        ) as http:
            answer = await http.post("/v1/webhooks/hubspot", content=body, headers=signed(body))
        answers.append(answer.json())

    assert answers == [{"received": 1, "stored": 1}, {"received": 1, "stored": 0}]
    assert not Path(settings.intake_journal_path).with_name("hubspot_events.sqlite3").exists()
    journaled = [await anyio.to_thread.run_sync(r.process_pending) for r in receivers]
    assert journaled == [1, 0]
    assert read.call_count == 1
    land_everything(replicas[1])
    assert landed_emails(settings) == {ADA["email"]: 1}


def _files_holding(cur: Any, value: bytes) -> list[str]:
    """The files of the test's database (tables and indexes, not the WAL) holding ``value``."""
    cur.execute(
        "SELECT current_setting('data_directory'), oid FROM pg_database "
        "WHERE datname = current_database()"
    )
    data_directory, oid = cur.fetchone()
    folder = Path(data_directory) / "base" / str(oid)
    return [str(path) for path in folder.iterdir() if path.is_file() and value in path.read_bytes()]
