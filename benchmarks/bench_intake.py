"""``make bench-intake``: the intake service measured against the issue's targets.

One run on this machine, every server its own process on 127.0.0.1, in four parts:

1. **Accepting leads.** A bare Starlette/uvicorn app answering 202 to any POST (the stack's
   ceiling), ``enrich-pipeline serve``, and ``serve`` while another process holds the
   warehouse's write lock (as a Dagster backfill does). Each intake row gets a fresh service,
   so it measures its own load, not the write-back of the row before. Loads: single leads at
   fixed arrival rates (open loop), single leads and batches of 100 as fast as they are
   answered (closed loop).
2. **``Prefer: wait=10``** with the sandbox at 200 ms latency, match rate 1.0: new
   leads one after another (each a new work email at its own company domain), then the same
   leads again once their persons are fresh.
3. **POST to HubSpot.** ``serve`` delivering to ``enrich-pipeline hubspot-sandbox``; leads
   posted at a steady rate, the stand-in polled until each contact holds an enriched
   ``jobtitle``.
4. **``kill -9`` under load.** Senders post single leads with unique ``Idempotency-Key``\\ s;
   the service is killed at a random moment and restarted on the same journal and warehouse;
   every unacknowledged request is retried under its key until acknowledged. Then
   ``raw_contacts`` is counted read-only: acknowledged vs landed vs duplicated.

The load generator is a minimal HTTP/1.1 keep-alive client on raw asyncio streams (16
connections, requests encoded before the clock starts), cheap enough to offer 500 requests a
second from one process on two cores beside the server. Its ceiling (its closed loop against
the bare endpoint) is reported, and so is its p99 offering each rate to the bare endpoint.
Open-loop latency runs from each request's scheduled send time, so a backlog, in the client or
the server, shows up as latency (no coordinated omission).

Every intake service gets its own temp dir and only the settings given here (no inherited
``ENRICH_*``, ``HUBSPOT_*``, ``DATA_LEGION_*`` or ``DAGSTER_HOME``). The provider is the
sandbox served as its own process (``enrich-pipeline sandbox``), called with a key as the real
one is: its work is not counted in the service's process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx

from enrich_pipeline.settings import environment_for

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-intake-token"
HUBSPOT_TOKEN = "bench-hubspot-token"
CONNECTIONS = 16
PROVIDER_LATENCY_MS = 200.0
# The stand-in answers as HubSpot would from across a network (an assumed 100 ms), under
# HubSpot's own limit for a private app (100 requests per 10 s).
HUBSPOT_LATENCY_MS = 100
HUBSPOT_PER_10S = 100
SERVE = [sys.executable, "-m", "enrich_pipeline.cli", "serve"]
BARE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def accept(request):
    await request.body()
    return JSONResponse({"accepted": 1}, status_code=202)

async def health(request):
    return JSONResponse({})

routes = [Route("/v1/leads", accept, methods=["POST"]), Route("/healthz", health)]
uvicorn.run(
    Starlette(routes=routes),
    host="127.0.0.1",
    port=int(sys.argv[1]),
    log_level="warning",
    access_log=False,
)
"""
# Holds the warehouse's write lock until told to stop, as a long Dagster run does; the service
# may have the file open for a moment when asked, hence the retries.
LOCK_HOLDER = """
import sys, time, duckdb
for attempt in range(100):
    try:
        con = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        time.sleep(0.1)
else:
    sys.exit("could not take the warehouse's write lock")
print("holding", flush=True)
sys.stdin.readline()
"""


# --- the load generator ---------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: write a prebuilt request, read the status line, the
    headers and ``Content-Length`` bytes. The whole client, so it costs little beside the
    server it measures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, request: bytes, timeout_s: float = 30) -> tuple[int, bytes, bytes]:
        """Status, header block (lower-cased) and body. Past ``timeout_s`` (longer than any
        ``Prefer: wait``) it raises ``TimeoutError``; the connection is then unusable."""
        async with asyncio.timeout(timeout_s):
            self._writer.write(request)
            await self._writer.drain()
            head = (await self._reader.readuntil(b"\r\n\r\n")).lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
            body = await self._reader.readexactly(length) if length else b""
        return int(head[9:12]), head, body

    def close(self) -> None:
        self._writer.close()


# What a dead or reset connection raises mid-request.
CONNECTION_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


def post_leads(port: int, body: object, headers: Mapping[str, str] | None = None) -> bytes:
    """``POST /v1/leads``, encoded."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [
        "POST /v1/leads HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def lead(i: int, tag: str = "bench") -> dict[str, str]:
    """A new work-email identity at its own company domain."""
    return {"email": f"{tag}{i}@{tag}-co{i}.example", "first_name": f"Lead{i}", "last_name": tag}


@dataclass
class Result:
    scenario: str
    server: str
    leads_per_request: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def accepted_per_s(self) -> float:
        ok = len(self.latencies_ms) - self.failed
        return ok * self.leads_per_request / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def drive(
    port: int, requests: Sequence[bytes], result: Result, seconds: float, rate: float | None
) -> Result:
    """Send ``requests`` over ``CONNECTIONS`` connections for ``seconds``: at ``rate`` a second
    whatever the answers do (open loop, latency from each request's scheduled time), or, with
    no rate, each connection's next as soon as its last is answered (closed loop). A pool
    shorter than the run is cycled."""
    connections = [await Connection.open(port) for _ in range(CONNECTIONS)]
    counter = itertools.count()
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(connection: Connection) -> None:
        while True:
            i = next(counter)
            now = time.perf_counter()
            due = now if rate is None else started + i / rate
            if due >= deadline:
                break
            if due > now:
                await asyncio.sleep(due - now)
            try:
                status = (await connection.send(requests[i % len(requests)]))[0]
            except CONNECTION_ERRORS:
                status = 0
                connection.close()
                connection = await Connection.open(port)
            result.latencies_ms.append((time.perf_counter() - due) * 1000)
            if status != 202:
                result.failed += 1
        connection.close()

    await asyncio.gather(*(worker(c) for c in connections))
    result.seconds = time.perf_counter() - started
    return result


def open_loop(port: int, server: str, rate: int, seconds: float) -> Result:
    requests = [post_leads(port, lead(i)) for i in range(int(rate * seconds) + 1)]
    result = Result(f"open loop, {rate} leads/s", server, 1)
    return asyncio.run(drive(port, requests, result, seconds, rate))


def closed_loop(port: int, server: str, batch: int, seconds: float) -> Result:
    # Unique leads for well over what a run sends at these machines' rates; cycled beyond.
    count = 20_000 if batch == 1 else 1_000
    requests = [
        post_leads(port, lead(i) if batch == 1 else [lead(i * batch + j) for j in range(batch)])
        for i in range(count)
    ]
    result = Result(f"closed loop, batches of {batch}", server, batch)
    return asyncio.run(drive(port, requests, result, seconds, None))


async def one_by_one(port: int, requests: Sequence[bytes]) -> list[tuple[int, bytes, float]]:
    """Each request after the last is answered: status, body and milliseconds."""
    connection = await Connection.open(port)
    answers = []
    try:
        for request in requests:
            started = time.perf_counter()
            status, _, body = await connection.send(request)
            answers.append((status, body, (time.perf_counter() - started) * 1000))
    finally:
        connection.close()
    return answers


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env() -> dict[str, str]:
    """This environment without the project's settings or DAGSTER_HOME: a server gets only
    what the benchmark gives it."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("ENRICH_", "HUBSPOT_", "DATA_LEGION_")) and name != "DAGSTER_HOME"
    }


class Process:
    """A server run as its own process, its output in a log file under the run's temp dir."""

    def __init__(self, command: list[str], env: Mapping[str, str], port: int, log: Path) -> None:
        self.command, self.env, self.port, self.log = command, dict(env), port, log
        self.url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self._process = subprocess.Popen(
                self.command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, path: str = "/healthz", timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                break
            try:
                # Any answer will do: the stand-in's inspection route answers 404 when empty.
                if httpx.get(f"{self.url}{path}", timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(self.command[2:4])} did not start:\n{tail}")

    def kill(self) -> None:
        """``kill -9``: no shutdown of any kind."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            # A service still landing and enriching a big backlog can take over 15 s to stop
            # (seen 2026-12-02); its state is thrown away, so it is not waited for long.
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def running(process: Process, ready_path: str = "/healthz") -> Iterator[Process]:
    try:
        process.start()
        process.wait_ready(ready_path)
        yield process
    finally:
        process.stop()


SANDBOX_KEY = "bench-sandbox-key"


def provider(work: Path, name: str, **sandbox: object) -> Process:
    """The provider sandbox served as its own process (``enrich-pipeline sandbox``), set by
    ``sandbox`` (its settings' field names), as the real provider is: across the network, its
    work not in the service's process."""
    port = free_port()
    env = clean_env() | environment_for(accepted_api_key=SANDBOX_KEY, **sandbox)
    command = [sys.executable, "-m", "enrich_pipeline.cli", "sandbox"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    return Process(command, env, port, work / f"{name}-provider.log")


def service(work: Path, name: str, provider: Process, **settings: object) -> tuple[Process, Path]:
    """``enrich-pipeline serve`` with its own warehouse, journal and exports under ``work``,
    calling ``provider`` with its key, set by ``settings`` (field names) and the defaults
    only; and its warehouse's path."""
    home = work / name
    home.mkdir()
    warehouse = home / "warehouse.duckdb"
    port = free_port()
    env = clean_env() | environment_for(
        warehouse_path=warehouse,
        intake_journal_path=home / "intake.sqlite3",
        export_dir=home / "exports",
        limiter_dir=home / "ratelimit",
        intake_port=port,
        intake_token=TOKEN,
        base_url=provider.url,
        data_legion_api_key=SANDBOX_KEY,
        **settings,
    )
    return Process(SERVE, env, port, work / f"{name}.log"), warehouse


@contextmanager
def lock_held(warehouse: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(warehouse)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield
    finally:
        holder.stdin.write("done\n")
        holder.stdin.flush()
        holder.wait(timeout=30)


# --- reporting ------------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    measured: float | None  # None: not measured
    target: float
    unit: str = ""
    at_least: bool = False  # else at most

    def line(self) -> str:
        sign = "≥" if self.at_least else "≤"
        goal = f"target {sign} {self.target:,g}{self.unit}"
        if self.measured is None:
            return f"- {self.what}: not measured ({goal})"
        met = self.measured >= self.target if self.at_least else self.measured <= self.target
        verdict = "met" if met else "NOT met"
        places = 0 if float(self.measured).is_integer() else 2
        return f"- {self.what}: {self.measured:,.{places}f}{self.unit} ({goal}): {verdict}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(value: float) -> str:
    return f"{value:,.1f}"


# --- 1. accepting leads ---------------------------------------------------------------------


def part_accept(work: Path, seconds: float, rates: Sequence[int], targets: list[Target]) -> None:
    results: list[Result] = []
    port = free_port()
    bare = Process(
        [sys.executable, "-c", BARE_APP, str(port)], clean_env(), port, work / "bare.log"
    )
    with running(bare):
        results += [open_loop(port, "bare endpoint", rate, seconds) for rate in rates]
        results += [closed_loop(port, "bare endpoint", size, seconds) for size in (1, 100)]
    loads = [(open_loop, rate) for rate in rates] + [(closed_loop, 1), (closed_loop, 100)]
    with running(provider(work, "accept")) as sandbox:
        for held in (False, True):
            label = "intake, warehouse held" if held else "intake"
            for n, (run, size) in enumerate(loads):
                name = f"accept-{'held' if held else 'free'}-{n}"
                process, warehouse = service(work, name, sandbox)
                with running(process), lock_held(warehouse) if held else nullcontext():
                    results.append(run(process.port, label, size, seconds))

    print(
        table(
            ["scenario", "server", "leads/s accepted", "p50 ms", "p99 ms", "max ms", "failed"],
            [
                (
                    r.scenario,
                    r.server,
                    f"{r.accepted_per_s:,.0f}",
                    ms(statistics.median(r.latencies_ms)),
                    ms(percentile(r.latencies_ms, 0.99)),
                    ms(max(r.latencies_ms)),
                    r.failed,
                )
                for r in results
            ],
        )
    )
    by = {(r.scenario, r.server): r for r in results}
    bare_single = by[("closed loop, batches of 1", "bare endpoint")]
    offered = "; ".join(
        f"{rate}/s offered to it: p99 "
        f"{ms(percentile(by[(f'open loop, {rate} leads/s', 'bare endpoint')].latencies_ms, 0.99))}"
        " ms"
        for rate in rates
    )
    print(
        f"\nLoad generator's ceiling with the bare endpoint (closed loop, single leads): "
        f"{bare_single.accepted_per_s:,.0f} requests/s; {offered}.\n",
        flush=True,
    )
    single = by[("closed loop, batches of 1", "intake")]
    ratio = single.accepted_per_s / bare_single.accepted_per_s
    targets.append(Target("single leads, intake / bare endpoint", ratio, 0.10, at_least=True))
    held_500 = by.get(("open loop, 500 leads/s", "intake, warehouse held"))
    p99 = None if held_500 is None else percentile(held_500.latencies_ms, 0.99)
    targets.append(Target("p99 accept at 500 leads/s, warehouse held", p99, 20, " ms"))
    for server in ("intake", "intake, warehouse held"):
        accepted = by[("closed loop, batches of 100", server)].accepted_per_s
        targets.append(
            Target(f"batches of 100, {server}", accepted, 20_000, " leads/s", at_least=True)
        )


# --- 2. Prefer: wait ------------------------------------------------------------------------


def part_prefer_wait(work: Path, count: int, targets: list[Target]) -> None:
    sandbox = provider(work, "prefer-wait", latency_ms=PROVIDER_LATENCY_MS, match_rate=1.0)
    process, _ = service(work, "prefer-wait", sandbox)
    with running(sandbox), running(process):
        requests = [
            post_leads(process.port, lead(i, "wait"), {"Prefer": "wait=10"}) for i in range(count)
        ]
        new = asyncio.run(one_by_one(process.port, requests))
        # The same leads again: their persons are fresh now, so no look-up is due.
        fresh = asyncio.run(one_by_one(process.port, requests))
    rows = []
    for name, answers in (("new identity", new), ("the same lead again (fresh)", fresh)):
        times = [elapsed for _, _, elapsed in answers]
        enriched = sum(
            status == 200 and bool(json.loads(body)["records"][0].get("job_title"))
            for status, body, _ in answers
        )
        rows.append(
            (
                name,
                f"{PROVIDER_LATENCY_MS:g} ms sandbox",
                len(answers),
                sum(status == 200 for status, _, _ in answers),
                enriched,
                sum(status == 202 for status, _, _ in answers),
                ms(statistics.median(times)),
                ms(percentile(times, 0.95)),
                ms(max(times)),
            )
        )
    print(
        table(
            [
                "leads",
                "provider",
                "sent",
                "200",
                "200 with job_title",
                "202",
                "p50 ms",
                "p95 ms",
                "max ms",
            ],
            rows,
        )
        + "\n",
        flush=True,
    )
    new_p50 = statistics.median(elapsed for _, _, elapsed in new)
    fresh_p50 = statistics.median(elapsed for _, _, elapsed in fresh)
    limit = PROVIDER_LATENCY_MS + 100
    targets.append(Target("Prefer: wait p50, new identity", new_p50, limit, " ms"))
    targets.append(Target("Prefer: wait p50, fresh", fresh_p50, 20, " ms"))


# --- 3. POST to HubSpot stand-in ------------------------------------------------------------


def hubspot_sandbox_available() -> bool:
    command = [sys.executable, "-m", "enrich_pipeline.cli", "hubspot-sandbox", "--help"]
    return subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0


async def post_and_watch(
    port: int, stand_in: str, count: int, rate: float, give_up_s: float = 30
) -> tuple[list[int], dict[str, float]]:
    """Post ``count`` leads at ``rate`` a second (no Prefer) while polling the stand-in for each
    posted email until its contact has a ``jobtitle``: the statuses, and seconds per email
    from its POST to the stand-in holding it enriched."""
    leads = [lead(i, "hubspot") for i in range(count)]
    requests = [post_leads(port, one) for one in leads]
    posted: dict[str, float] = {}
    arrived: dict[str, float] = {}
    statuses: list[int] = []

    async def poster() -> None:
        connection = await Connection.open(port)
        started = time.perf_counter()
        for i, (one, request) in enumerate(zip(leads, requests, strict=True)):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            posted[one["email"]] = time.perf_counter()
            statuses.append((await connection.send(request))[0])
        connection.close()

    async def watcher(client: httpx.AsyncClient) -> None:
        give_up = float("inf")
        while len(arrived) < count and time.perf_counter() < give_up:
            for email in [email for email in posted if email not in arrived]:
                answer = await client.get(f"/_sandbox/contacts/{email}")
                if answer.status_code == 200 and answer.json().get("properties", {}).get(
                    "jobtitle"
                ):
                    arrived[email] = time.perf_counter() - posted[email]
            if len(posted) == count and give_up == float("inf"):
                give_up = time.perf_counter() + give_up_s
            # About 10 rounds a second: fine enough against seconds, light on the CPU.
            await asyncio.sleep(0.1)

    headers = {"Authorization": f"Bearer {HUBSPOT_TOKEN}"}
    async with httpx.AsyncClient(base_url=stand_in, headers=headers, timeout=5) as client:
        await asyncio.gather(poster(), watcher(client))
    return statuses, arrived


def part_hubspot(work: Path, count: int, rate: float, targets: list[Target]) -> None:
    if not hubspot_sandbox_available():
        print("Skipped: `enrich-pipeline hubspot-sandbox` is not there yet.\n", flush=True)
        targets.append(Target("POST to HubSpot stand-in enriched, p50", None, 3, " s"))
        targets.append(Target("POST to HubSpot stand-in enriched, p95", None, 10, " s"))
        return
    port = free_port()
    command = [sys.executable, "-m", "enrich_pipeline.cli", "hubspot-sandbox"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--token", HUBSPOT_TOKEN]
    command += ["--requests-per-10s", str(HUBSPOT_PER_10S), "--latency-ms", str(HUBSPOT_LATENCY_MS)]
    stand_in = Process(command, clean_env(), port, work / "hubspot-sandbox.log")
    with running(stand_in, ready_path="/_sandbox/contacts/nobody@bench.example"):
        sandbox = provider(work, "hubspot", latency_ms=PROVIDER_LATENCY_MS, match_rate=1.0)
        process, _ = service(
            work,
            "hubspot",
            sandbox,
            crm_destinations="file,hubspot",
            hubspot_base_url=stand_in.url,
            hubspot_access_token=HUBSPOT_TOKEN,
        )
        with running(sandbox), running(process):
            statuses, arrived = asyncio.run(post_and_watch(process.port, stand_in.url, count, rate))
    # A contact that never arrived counts as infinitely late, so it cannot flatter a percentile.
    delays = list(arrived.values()) + [float("inf")] * (count - len(arrived))
    print(
        table(
            [
                "leads",
                "posted",
                "202",
                "in HubSpot enriched",
                "never (30 s)",
                "p50 s",
                "p95 s",
                "max s",
            ],
            [
                (
                    f"{rate:g}/s; sandbox {PROVIDER_LATENCY_MS:g} ms; stand-in "
                    f"{HUBSPOT_LATENCY_MS} ms, {HUBSPOT_PER_10S} requests/10 s",
                    count,
                    sum(status == 202 for status in statuses),
                    len(arrived),
                    count - len(arrived),
                    f"{statistics.median(delays):.2f}",
                    f"{percentile(delays, 0.95):.2f}",
                    f"{max(delays):.2f}",
                )
            ],
        )
        + "\n",
        flush=True,
    )
    targets.append(
        Target("POST to HubSpot stand-in enriched, p50", statistics.median(delays), 3, " s")
    )
    targets.append(
        Target("POST to HubSpot stand-in enriched, p95", percentile(delays, 0.95), 10, " s")
    )


# --- 4. kill -9 under load ------------------------------------------------------------------


@dataclass
class KillRun:
    killed_after_s: float
    acknowledged: set[str] = field(default_factory=set)
    acknowledged_before_kill: int = 0
    retried: int = 0  # acknowledged after more than one attempt
    replayed: int = 0  # acknowledged as a replay: journaled before, its answer lost
    refused: int = 0  # answered 4xx, never retried
    gave_up: int = 0


async def post_through_kill(
    process: Process, count: int, rate: float, senders: int, run: KillRun
) -> None:
    """``senders`` connections post ``count`` leads, each with its own ``Idempotency-Key``, at
    ``rate`` a second; the service is killed after ``run.killed_after_s`` and restarted at
    once. A request not acknowledged (2xx) is sent again under its key until it is."""
    leads = [lead(i, "kill") for i in range(count)]
    requests = [
        post_leads(process.port, one, {"Idempotency-Key": f"bench-kill-{i}"})
        for i, one in enumerate(leads)
    ]
    counter = itertools.count()
    started = time.perf_counter()
    give_up = started + 120

    async def deliver(i: int, connection: Connection | None) -> Connection | None:
        attempts = 0
        while time.perf_counter() < give_up:
            attempts += 1
            try:
                if connection is None:
                    connection = await Connection.open(process.port)
                status, head, _ = await connection.send(requests[i])
            except CONNECTION_ERRORS:
                if connection is not None:
                    connection.close()
                connection = None
                await asyncio.sleep(0.05)
                continue
            if 200 <= status < 300:
                run.acknowledged.add(leads[i]["email"])
                run.retried += attempts > 1
                run.replayed += b"idempotent-replayed: true" in head
                return connection
            if status < 500:
                run.refused += 1
                return connection
            await asyncio.sleep(0.05)
        run.gave_up += 1
        return connection

    async def sender() -> None:
        connection = None
        while (i := next(counter)) < count:
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            connection = await deliver(i, connection)
        if connection is not None:
            connection.close()

    async def killer() -> None:
        await asyncio.sleep(run.killed_after_s)
        process.kill()
        run.acknowledged_before_kill = len(run.acknowledged)
        # The same journal and warehouse; senders retry until it answers.
        process.start()

    await asyncio.gather(*(sender() for _ in range(senders)), killer())


def wait_landed(process: Process, timeout_s: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = httpx.get(f"{process.url}/healthz", timeout=5).json()
        if status["landed_through_seq"] >= status["journal_last_seq"] or (
            time.monotonic() > deadline
        ):
            return status
        time.sleep(0.2)


def part_kill(work: Path, seconds: float, targets: list[Target]) -> None:
    rate, senders = 200, 8
    count = int(rate * seconds)
    run = KillRun(killed_after_s=round(random.uniform(0.2, 0.8) * seconds, 2))
    sandbox = provider(work, "kill")
    process, warehouse = service(work, "kill", sandbox)
    with running(sandbox), running(process):
        asyncio.run(post_through_kill(process, count, rate, senders, run))
        process.wait_ready()
        status = wait_landed(process)
    # Stopped: the warehouse can be opened, read-only, to count what landed.
    with duckdb.connect(str(warehouse), read_only=True) as con:
        landed = dict(
            con.execute("SELECT email, count(*) FROM raw_contacts GROUP BY email").fetchall()
        )
    lost = len(run.acknowledged - landed.keys())
    duplicated = sum(n - 1 for n in landed.values())
    unasked = len(landed.keys() - run.acknowledged)
    print(
        table(
            [
                "load",
                "killed after",
                "sent",
                "acknowledged",
                "before the kill",
                "retried",
                "replayed",
                "refused",
                "landed",
                "lost",
                "duplicated",
                "landed, never acked",
            ],
            [
                (
                    f"{senders} senders, {rate}/s",
                    f"{run.killed_after_s:.2f} s",
                    count,
                    len(run.acknowledged),
                    run.acknowledged_before_kill,
                    run.retried,
                    run.replayed,
                    run.refused,
                    len(landed),
                    lost,
                    duplicated,
                    unasked,
                )
            ],
        )
    )
    print(f"\n/healthz at the end: {json.dumps(status)}\n", flush=True)
    targets.append(Target("kill -9: acknowledged leads not landed", lost, 0))
    targets.append(Target("kill -9: duplicated leads", duplicated, 0))
    targets.append(Target("kill -9: requests never acknowledged", run.gave_up + run.refused, 0))


# --- the run --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="per accepting scenario, and the length of the HubSpot and kill -9 loads (10)",
    )
    parser.add_argument(
        "--rates", default="200,500", help="open-loop leads per second, comma-separated"
    )
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    print(f"load average before: {os.getloadavg()[0]:.1f}\n", flush=True)
    targets: list[Target] = []
    failed = []
    parts = [
        ("1. Accepting leads", lambda work: part_accept(work, args.seconds, rates, targets)),
        (
            f"2. Prefer: wait=10, sandbox at {PROVIDER_LATENCY_MS:g} ms",
            lambda work: part_prefer_wait(work, max(5, round(2 * args.seconds)), targets),
        ),
        (
            "3. POST to the HubSpot stand-in holding the enriched record",
            lambda work: part_hubspot(work, max(5, round(5 * args.seconds)), 5, targets),
        ),
        ("4. kill -9 under load", lambda work: part_kill(work, args.seconds, targets)),
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-intake-", ignore_cleanup_errors=True) as tmp:
        for title, part in parts:
            print(f"## {title}\n", flush=True)
            part_started = time.monotonic()
            try:
                part(Path(tmp))
            except Exception:
                # One part's failure (say, a stand-in still being built) leaves the others'.
                traceback.print_exc()
                failed.append(title)
            print(f"({time.monotonic() - part_started:.0f} s)\n", flush=True)
    print("## Targets\n")
    print("\n".join(target.line() for target in targets))
    for title in failed:
        print(f"- part {title!r} failed: see above")
    print(
        f"\nload average after: {os.getloadavg()[0]:.1f}; {time.monotonic() - started:.0f} s in all"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
