"""Claims on look-ups in a Postgres warehouse, shared by processes that share nothing else, as
machines would: each key is one holder's; what a holder releases, or held when it died, is
another's to take."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from enrich_pipeline.in_flight import InFlight, Key, claims_path, empty_wal
from enrich_pipeline.warehouse.postgres import WarehouseUnreachable, libpq_url

pytestmark = pytest.mark.postgres

PERSON_A, PERSON_B, COMPANY = (
    ("person", "a@acme.com"),
    ("person", "b@acme.com"),
    ("company", "acme.com"),
)
# Whatever a key holds reaches the database as it is.
ODD = ("company", "tab\there, back\\slash,\nnewline, o'quote")
PASSWORD = "hunter2-secret"

# Another machine: claims or releases the keys it is told to, one JSON command a line, and
# holds its claims until stdin closes; then it exits without releasing them.
_MACHINE = """
import json, sys
from enrich_pipeline.in_flight import InFlight

in_flight = InFlight(sys.argv[1], holder=sys.argv[2])
print("ready", flush=True)
for line in sys.stdin:
    command, keys = json.loads(line)
    keys = {(kind, key) for kind, key in keys}
    if command == "claim":
        print(json.dumps(sorted(in_flight.claim(keys))), flush=True)
    else:
        in_flight.release(keys)
        print("[]", flush=True)
"""


class _Machine:
    def __init__(self, url: str, holder: str, folder: Path) -> None:
        folder.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MACHINE, url, holder],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=folder,
        )
        assert self._line() == "ready"

    def send(self, command: str, keys: set[Key]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([command, sorted(keys)]) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> set[Key]:
        return {(kind, key) for kind, key in json.loads(self._line())}

    def ask(self, command: str, keys: set[Key]) -> set[Key]:
        self.send(command, keys)
        return self.answer()

    def exit(self) -> None:
        """Stdin closed: it exits without releasing what it holds."""
        self.proc.communicate(timeout=30)

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()


@pytest.fixture
def machines(postgres_database: str, tmp_path: Path) -> Iterator[list[_Machine]]:
    """Two other machines' processes on the test's database, each in a folder of its own."""
    started: list[_Machine] = []
    try:
        for n in (1, 2):
            started.append(_Machine(postgres_database, f"machine {n}", tmp_path / f"m{n}"))
        yield started
    finally:
        for machine in started:
            machine.proc.kill()
            machine.proc.wait(timeout=30)


def test_two_machines_claiming_overlapping_keys_at_once_get_each_key_once(
    postgres_database: str, machines: list[_Machine]
) -> None:
    people: list[Key] = [("person", f"p{n:05}@acme.com") for n in range(3000)]
    # Overlapping in the middle, asked in opposite orders.
    first, second = set(people[:2000]), set(people[1000:])
    machine_1, machine_2 = machines
    machine_1.send("claim", first)
    machine_2.send("claim", second)
    got_1, got_2 = machine_1.answer(), machine_2.answer()

    assert got_1 & got_2 == set()
    assert got_1 | got_2 == set(people)
    assert got_1 <= first and got_2 <= second
    with InFlight(postgres_database) as mine:
        assert mine.held(set(people)) == dict.fromkeys(got_1, "machine 1") | dict.fromkeys(
            got_2, "machine 2"
        )
        assert mine.claim(people) == set()


def test_what_another_machine_holds_is_not_claimed_until_it_releases_or_exits(
    postgres_database: str, machines: list[_Machine]
) -> None:
    machine = machines[0]
    assert machine.ask("claim", {PERSON_A, COMPANY}) == {PERSON_A, COMPANY}
    with InFlight(postgres_database, holder="run 5678") as mine:
        assert mine.claim({PERSON_A, PERSON_B, COMPANY}) == {PERSON_B}
        assert mine.held({PERSON_A, PERSON_B, COMPANY}) == {
            PERSON_A: "machine 1",
            COMPANY: "machine 1",
            PERSON_B: "run 5678",
        }
        assert mine.wait({PERSON_A}, timeout_s=0.05), "held, so waited for"

        machine.ask("release", {PERSON_A})
        assert mine.claim({PERSON_A, COMPANY}) == {PERSON_A}

        # It exits without releasing: gone, it holds nothing.
        machine.exit()
        mine.wait({COMPANY}, timeout_s=60)
        assert mine.claim({COMPANY}) == {COMPANY}


def test_a_killed_machine_holds_nothing(postgres_database: str, machines: list[_Machine]) -> None:
    killed, other = machines
    assert killed.ask("claim", {PERSON_A, COMPANY}) == {PERSON_A, COMPANY}
    assert other.ask("claim", {PERSON_A, COMPANY}) == set()
    os.kill(killed.proc.pid, signal.SIGKILL)
    killed.proc.wait(timeout=30)

    with InFlight(postgres_database) as mine:
        mine.wait({PERSON_A, COMPANY}, timeout_s=60)
        assert mine.held({PERSON_A, COMPANY}) == {}
    assert other.ask("claim", {PERSON_A, COMPANY}) == {PERSON_A, COMPANY}


def test_a_wait_returns_when_another_machine_releases(
    postgres_database: str, machines: list[_Machine]
) -> None:
    machine = machines[0]
    assert machine.ask("claim", {PERSON_A}) == {PERSON_A}
    with InFlight(postgres_database) as mine:
        assert mine.held({PERSON_A}) == {PERSON_A: "machine 1"}
        # No timeout: it waits as long as the holder lives and holds the key.
        waiting = threading.Thread(target=mine.wait, args=({PERSON_A}, None), daemon=True)
        waiting.start()
        machine.ask("release", {PERSON_A})
        waiting.join(timeout=60)
        assert not waiting.is_alive()
        assert mine.claim({PERSON_A}) == {PERSON_A}


def test_claims_are_released_once_and_closing_frees_the_rest(postgres_database: str) -> None:
    where = claims_path(postgres_database)
    first = InFlight(where, holder="run 1")
    assert first.claim({PERSON_A, PERSON_B, ODD}) == {PERSON_A, PERSON_B, ODD}
    first.release({PERSON_A})
    with InFlight(where) as second:
        assert second.claim({PERSON_A, PERSON_B, ODD}) == {PERSON_A}
        assert second.held({PERSON_B, ODD}) == {PERSON_B: "run 1", ODD: "run 1"}
        first.close()
        assert second.claim({PERSON_B, ODD}) == {PERSON_B, ODD}
    # Nothing of the claims is in a file beside the warehouse for the erasure to empty.
    assert empty_wal(where)


def _with_password(url: str, **parts: str) -> str:
    return make_url(url).set(password=PASSWORD, **parts).render_as_string(hide_password=False)


def test_the_password_is_in_no_message(postgres_database: str) -> None:
    with pytest.raises(WarehouseUnreachable) as unreachable:
        InFlight(_with_password(postgres_database, database="no_such_database"))
    assert "no_such_database" in str(unreachable.value)
    assert PASSWORD not in str(unreachable.value)

    # The server ends the holder's session mid-run (a restart, an administrator).
    url = _with_password(postgres_database)
    mine = InFlight(url)
    with psycopg2.connect(libpq_url(postgres_database)) as admin, admin.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert [ended for (ended,) in cur.fetchall()] == [True]
    admin.close()
    with pytest.raises(WarehouseUnreachable) as lost:
        mine.claim({PERSON_A})
    assert "lost the in-flight claims' connection" in str(lost.value)
    assert PASSWORD not in str(lost.value)
    mine.close()  # its session, and what it held, are gone already
