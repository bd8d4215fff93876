"""``enrich-pipeline serve`` as a real process: it refuses to listen off loopback without a
token, a ``kill -9`` in the middle of a stream of leads loses no acknowledged lead and, with
clients retrying under their Idempotency-Key, lands none twice; and what it lands shows on
``raw_contacts`` in Dagster."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from dagster import AssetKey, DagsterInstance

from enrich_pipeline.cli import main
from enrich_pipeline.dagster_layer.landing_events import report_landing
from enrich_pipeline.intake.landing import LandingReport
from enrich_pipeline.settings import Settings
from enrich_pipeline_tests.helpers import (
    READY_S,
    intake_environment,
    read_warehouse,
    serving,
    wait_for_health,
)

TOKEN = "intake-secret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEADS = 200
KILL_AFTER = 60


def test_listening_off_loopback_without_a_token_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "ENRICH_INTAKE_TOKEN" in capsys.readouterr().err


def _post(base_url: str, i: int) -> bool:
    lead = {"email": f"lead{i}@stream.example", "first_name": f"Lead{i}"}
    try:
        answer = httpx.post(
            f"{base_url}/v1/leads",
            json=lead,
            headers={**AUTH, "Idempotency-Key": f"lead-{i}"},
            timeout=10,
        )
    except httpx.TransportError:
        return False
    return answer.status_code == 202


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Alive, not merely a zombie left for a parent that is gone to reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_lead_and_lands_none_twice(
    tmp_path: Path, settings: Settings
) -> None:
    env, base_url = intake_environment(tmp_path, intake_token=TOKEN)
    acknowledged: set[int] = set()
    enough = threading.Event()
    lock = threading.Lock()

    def send(i: int) -> None:
        if _post(base_url, i):
            with lock:
                acknowledged.add(i)
                if len(acknowledged) >= KILL_AFTER:
                    enough.set()

    with serving(env, base_url) as service, ThreadPoolExecutor(8) as pool:
        sent = [pool.submit(send, i) for i in range(LEADS)]
        assert enough.wait(READY_S)
        mover_processes = _children(service.pid)
        assert mover_processes, "the mover runs in a process of its own"
        service.kill()  # SIGKILL: no shutdown, no flush, mid-request for some
        for future in sent:
            future.result()
    assert KILL_AFTER <= len(acknowledged) < LEADS
    # The mover's process does not outlive the service it served.
    deadline = time.monotonic() + READY_S
    while any(_running(pid) for pid in mover_processes):
        assert time.monotonic() < deadline, "the mover process outlived the killed service"
        time.sleep(0.05)

    # Clients retry what was never acknowledged, under the same key.
    with serving(env, base_url):
        for i in sorted(set(range(LEADS)) - acknowledged):
            assert _post(base_url, i)
        wait_for_health(
            base_url, lambda health: health["landed_through_seq"] == health["journal_last_seq"]
        )

    with read_warehouse(settings.warehouse_path) as con:
        rows = con.execute("SELECT email FROM raw_contacts").fetchall()
    emails = Counter(email for (email,) in rows)
    assert set(emails) == {f"lead{i}@stream.example" for i in range(LEADS)}
    assert max(emails.values()) == 1, "a lead landed twice"


@pytest.mark.slow
def test_the_mover_process_ends_with_a_killed_service_even_mid_look_up(tmp_path: Path) -> None:
    # A provider that takes the connection and never answers: the write-back's look-up waits
    # on it for as long as the request timeout allows.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        env, base_url = intake_environment(
            tmp_path,
            base_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
            data_legion_api_key="a-key-for-a-provider-that-never-answers",
            request_timeout_s=600,
        )
        with serving(env, base_url) as service:
            assert _post(base_url, 0)
            wait_for_health(base_url, lambda health: health["landed_through_seq"] == 1)
            mover_processes = _children(service.pid)
            service.kill()
        deadline = time.monotonic() + READY_S
        while any(_running(pid) for pid in mover_processes):
            assert time.monotonic() < deadline, "the mover process outlived the killed service"
            time.sleep(0.05)


def test_intake_landings_show_on_raw_contacts_in_the_dagster_ui(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    report_landing(LandingReport(entries=3, landed=2, quarantined=1, last_seq=41), "intake")
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(AssetKey("raw_contacts"))
    assert event is not None and event.asset_materialization is not None
    shown = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert shown == {"source": "intake", "landed": 2, "quarantined": 1, "journal_seq": 41}
