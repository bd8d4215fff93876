"""``make bench``: how close the client runs to a provider's rate limit, judged by the server.

Each scenario gets its own sandbox provider (``enrich-pipeline sandbox``) on a free 127.0.0.1
port with a rate limit and 200 ms latency, and enriches N unique contacts through the project's
own client in separate processes; all scenarios run at once, started together on a minute
boundary. The sandbox's ``GET /_sandbox/stats`` events then give, per scenario:
  * accepted requests per minute in steady state (the first window is warm-up, the last partial
    one is dropped) against the limit: utilisation;
  * the share of all requests answered 429: waste;
  * the time to N against the least the server's limiter allows;
  * for bulk runs, contacts per accepted request.
Rows: the article baseline (see ``article_baseline``), our single-call mode, our bulk mode (bulk
counted per request; and per item, for information), and three runs at once sharing one key;
fixed-window and token-bucket servers at 100/min and 600/min.

A second table compares requests per second against an unlimited sandbox: our client in single
mode against a bare ``httpx.AsyncClient`` loop at the same concurrency, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import math
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks import article_baseline
from enrich_pipeline.field_profiles import DEFAULT_PROFILE, field_profile
from enrich_pipeline.provider.client import EnrichmentClient
from enrich_pipeline.provider.http import build_http_client
from enrich_pipeline.provider.models import CallStats, Outcome, PersonQuery
from enrich_pipeline.sandbox import SandboxConfig
from enrich_pipeline.settings import environment_for
from enrich_pipeline.settings_base import env_name

REPO = Path(__file__).resolve().parents[1]
WINDOW_S = 60
LATENCY_MS = 200
LIMITS = (100, 600)
ALGORITHMS = ("fixed_window", "token_bucket")
CONCURRENCY = 8
BULK_SIZE = 100
BULK_CONTACTS = 20_000
READY_TIMEOUT_S = 60.0
OVERHEAD_ROUNDS = 3

TARGET_UTILISATION = 0.97
TARGET_WASTE = 0.005
TARGET_SHARED_UTILISATION = 0.90
TARGET_SHARED_WASTE = 0.01
TARGET_CONTACTS_PER_REQUEST = 95
TARGET_OVERHEAD_RATIO = 0.80

SERVER_NAMES = {"fixed_window": "fixed window", "token_bucket": "token bucket"}


@dataclass(frozen=True)
class Row:
    algorithm: str
    limit: int
    label: str
    strategy: str  # "article", "single" or "bulk"
    bulk_cost: str  # what a bulk call counts against the limit: "request" or "item"
    n: int
    processes: int = 1

    def units_needed(self) -> int:
        """What enriching N contacts costs against the limit."""
        if self.strategy == "bulk" and self.bulk_cost == "request":
            return math.ceil(self.n / BULK_SIZE)
        return self.n


def plan_rows(minutes: int) -> list[Row]:
    rows = []
    for algorithm in ALGORITHMS:
        for limit in LIMITS:
            # A warm-up window, `minutes` measured ones and part of one more; a token bucket
            # starts full, a window's worth that must be spent on top.
            windows = minutes + (1.25 if algorithm == "fixed_window" else 2.25)
            n = round(limit * windows)
            rows += [
                Row(algorithm, limit, "article baseline", "article", "request", n),
                Row(algorithm, limit, "ours, single calls", "single", "request", n),
                Row(algorithm, limit, "ours, bulk", "bulk", "request", BULK_CONTACTS),
                # Whole bulk calls only, so every accepted call costs the same.
                Row(
                    algorithm,
                    limit,
                    "ours, bulk, item-counted *",
                    "bulk",
                    "item",
                    n // BULK_SIZE * BULK_SIZE,
                ),
                Row(algorithm, limit, "ours, 3 runs sharing a key", "single", "request", n, 3),
            ]
    return rows


# What the pipeline asks for by default, so every loop sends the same request.
PERSON_FIELDS = field_profile(DEFAULT_PROFILE).person_include_fields


def person_queries(first: int, count: int) -> list[PersonQuery]:
    return [
        PersonQuery(key=f"c{i}", email=f"person{i}@company{i % 997}.com")
        for i in range(first, first + count)
    ]


def request_body(query: PersonQuery) -> dict[str, str]:
    """What our client posts for a single look-up, for the loops that bypass it."""
    return {**query.identifiers(), "include_fields": PERSON_FIELDS}


def supports_shared_state() -> bool:
    return "shared_state_dir" in inspect.signature(build_http_client).parameters


# --- sandbox servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SandboxServer:
    """``enrich-pipeline sandbox`` in its own process, configured through its environment."""

    def __init__(
        self, *, rate_limit: int | None, algorithm: str, bulk_cost: str, latency_ms: int
    ) -> None:
        self.port = free_port()
        self.api_key = f"bench-{os.urandom(8).hex()}"
        sandbox = {env_name(SandboxConfig, name) for name in SandboxConfig.model_fields}
        env = {k: v for k, v in os.environ.items() if k not in sandbox}
        env |= environment_for(
            rate_limit_per_min=rate_limit,
            latency_ms=latency_ms,
            limit_algorithm=algorithm,
            bulk_cost=bulk_cost,
            accepted_api_key=self.api_key,
        )
        # Lives as long as the server, to show why it died; closed in stop().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "enrich_pipeline.cli", "sandbox", "--port", str(self.port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._stderr.seek(0)
                    output = self._stderr.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"sandbox on port {self.port} exited:\n{output}")
                try:
                    if http.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"sandbox on port {self.port} not ready in {READY_TIMEOUT_S:.0f} s")

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/_sandbox/stats", timeout=30.0)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


# --- worker processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    strategy: str
    base_url: str
    api_key: str
    first: int
    count: int
    deadline_s: float
    shared_state_dir: str | None = None


@dataclass
class WorkerResult:
    done: int = 0
    errors: int = 0
    stopped_at_deadline: bool = False
    late_start_s: float = 0.0
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    throttle_waits: int = 0
    throttle_wait_s: float = 0.0


async def _run_ours(spec: WorkerSpec, start_at: float) -> WorkerResult:
    stats = CallStats()
    options = {"shared_state_dir": spec.shared_state_dir} if spec.shared_state_dir else {}
    http = build_http_client(base_url=spec.base_url, api_key=spec.api_key, stats=stats, **options)
    client = EnrichmentClient(
        http,
        stats=stats,
        include_fields={"person": PERSON_FIELDS},
        use_bulk=spec.strategy == "bulk",
        bulk_size=BULK_SIZE,
        max_concurrency=CONCURRENCY,
    )
    queries = person_queries(spec.first, spec.count)
    outcomes: Counter[Outcome] = Counter()
    result = WorkerResult()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    result.late_start_s = time.time() - start_at
    async with http:
        try:
            async with asyncio.timeout(start_at + spec.deadline_s - time.time()):
                async for enriched in client.enrich("person", queries):
                    outcomes[enriched.status] += 1
        except TimeoutError:
            result.stopped_at_deadline = True
    result.done = outcomes[Outcome.MATCHED] + outcomes[Outcome.NO_MATCH]
    result.errors = outcomes[Outcome.ERROR]
    result.requests = stats.requests
    result.rate_limited = stats.rate_limited
    result.retries = stats.retries
    result.throttle_waits = stats.throttle_waits
    result.throttle_wait_s = round(stats.throttle_wait_s, 1)
    return result


def _run_article(spec: WorkerSpec, start_at: float) -> WorkerResult:
    bodies = [request_body(query) for query in person_queries(spec.first, spec.count)]
    stop = threading.Event()
    time.sleep(max(0.0, start_at - time.time()))
    late_start_s = time.time() - start_at
    timer = threading.Timer(start_at + spec.deadline_s - time.time(), stop.set)
    timer.start()
    run = article_baseline.enrich_all(spec.base_url, spec.api_key, bodies, stop)
    timer.cancel()
    return WorkerResult(
        done=run.done,
        errors=run.errors,
        stopped_at_deadline=stop.is_set(),
        late_start_s=late_start_s,
        requests=run.requests,
        rate_limited=run.rate_limited,
    )


def worker_main() -> int:
    """One client run: reads its spec, says ready, waits for the start time, reports as JSON."""
    spec = WorkerSpec(**json.loads(sys.stdin.readline()))
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    if spec.strategy == "article":
        result = _run_article(spec, start_at)
    else:
        result = asyncio.run(_run_ours(spec, start_at))
    print(json.dumps(asdict(result)), flush=True)
    return 0


class WorkerProcess:
    def __init__(self, spec: WorkerSpec) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_rate_limit", "--worker"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin
        self._stdout = self.process.stdout
        self._stdin.write(json.dumps(asdict(spec)) + "\n")
        self._stdin.flush()

    def wait_ready(self, deadline: float) -> None:
        readable, _, _ = select.select(
            [self._stdout], [], [], max(0.0, deadline - time.monotonic())
        )
        if not readable or self._stdout.readline().strip() != "ready":
            raise RuntimeError("a benchmark worker did not start")

    def start(self, start_at: float) -> None:
        # Left open: communicate() in result() closes it.
        self._stdin.write(f"{start_at}\n")
        self._stdin.flush()

    def result(self, timeout_s: float) -> WorkerResult:
        out, _ = self.process.communicate(timeout=timeout_s)
        if self.process.returncode != 0:
            raise RuntimeError(f"a benchmark worker failed (exit {self.process.returncode})")
        return WorkerResult(**json.loads(out.strip().splitlines()[-1]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- what the server saw ---------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    row: Row
    requests: int
    rate_limited: int
    accepted: int
    items: int
    windows: list[float]  # units counted against the limit, per measured window
    time_to_n_s: float | None
    projected: bool
    bound_s: float
    clients: list[WorkerResult] = field(default_factory=list)

    @property
    def waste(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0

    @property
    def steady_per_min(self) -> float | None:
        return sum(self.windows) / len(self.windows) if self.windows else None

    @property
    def utilisation(self) -> float | None:
        per_min = self.steady_per_min
        return None if per_min is None else per_min / self.row.limit

    @property
    def contacts_per_request(self) -> float:
        return self.items / self.accepted if self.accepted else 0.0


def lower_bound_s(row: Row, start_at: float) -> float:
    """The earliest N can be done: when the server's limiter lets the last unit through, or
    what CONCURRENCY requests in flight at the sandbox's latency allow, whichever is later."""
    units = row.units_needed()
    if row.algorithm == "fixed_window":
        first_window = start_at // WINDOW_S * WINDOW_S
        limiter_s = first_window + (units - 1) // row.limit * WINDOW_S - start_at
    else:  # the bucket starts full and refills limit/60 per second
        limiter_s = max(0, units - row.limit) * WINDOW_S / row.limit
    latency_s = LATENCY_MS / 1000
    requests = math.ceil(row.n / BULK_SIZE) if row.strategy == "bulk" else row.n
    return max(limiter_s + latency_s, math.ceil(requests / CONCURRENCY) * latency_s)


def measure(
    row: Row,
    stats: dict[str, Any],
    clients: list[WorkerResult],
    start_at: float,
    deadline_at: float,
) -> Measured:
    events = [(float(at), int(status), float(done)) for at, status, done in stats["events"]]
    # Windows count arrivals, as the provider's limiter does; time to N is to the last answer.
    accepted_at = sorted(at for at, status, _ in events if status != 429)
    last_answer_at = max((done for _, status, done in events if status != 429), default=start_at)
    accepted, items = len(accepted_at), int(stats["items_enriched"])
    # Item-counted bulk calls cost their items; whole calls of equal size, so the mean is exact.
    unit = items / accepted if row.bulk_cost == "item" and accepted else 1.0
    end = min(max((done for _, _, done in events), default=start_at), deadline_at)
    warm_up = start_at // WINDOW_S * WINDOW_S
    windows = []
    lo = warm_up + WINDOW_S
    while lo + WINDOW_S <= end:
        in_window = bisect_left(accepted_at, lo + WINDOW_S) - bisect_left(accepted_at, lo)
        windows.append(in_window * unit)
        lo += WINDOW_S
    finished = not any(client.stopped_at_deadline for client in clients)
    if finished and accepted_at:
        # The last answer, even if some contacts failed: the row says how many.
        time_to_n: float | None = last_answer_at - start_at
    else:
        # Cut at the deadline: at the pace it kept, N would have taken this long.
        time_to_n = (end - start_at) * row.n / items if items else None
    return Measured(
        row=row,
        requests=len(events),
        rate_limited=sum(1 for _, status, _ in events if status == 429),
        accepted=accepted,
        items=items,
        windows=windows,
        time_to_n_s=time_to_n,
        projected=not finished,
        bound_s=lower_bound_s(row, start_at),
        clients=clients,
    )


# --- client overhead against an unlimited sandbox --------------------------------------------


@dataclass(frozen=True)
class Speed:
    per_s: float
    cpu_us_per_request: float  # this process's CPU time: the client's own cost


async def _timed(queries: list[PersonQuery], calls: Awaitable[None]) -> Speed:
    wall, cpu = time.perf_counter(), time.process_time()
    await calls
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Speed(len(queries) / wall, 1e6 * cpu / len(queries))


async def _ours(base_url: str, api_key: str, queries: list[PersonQuery]) -> Speed:
    stats = CallStats()
    http = build_http_client(base_url=base_url, api_key=api_key, stats=stats)
    client = EnrichmentClient(
        http,
        stats=stats,
        include_fields={"person": PERSON_FIELDS},
        use_bulk=False,
        max_concurrency=CONCURRENCY,
    )
    outcomes: Counter[Outcome] = Counter()

    async def calls() -> None:
        async for result in client.enrich("person", queries):
            outcomes[result.status] += 1

    async with http:
        speed = await _timed(queries, calls())
    if outcomes[Outcome.ERROR] or stats.requests != len(queries):
        raise RuntimeError(f"our client: {outcomes[Outcome.ERROR]} errors, {stats.requests} calls")
    return speed


async def _bare(base_url: str, api_key: str, queries: list[PersonQuery]) -> Speed:
    """The leanest loop at the same concurrency: CONCURRENCY coroutines taking the next query.

    (A semaphore around one task per query costs about a quarter more CPU per request.)
    """
    pending = iter(queries)
    statuses: Counter[int] = Counter()

    async def worker(http: httpx.AsyncClient) -> None:
        for query in pending:
            response = await http.post("/person/enrich", json=request_body(query))
            if response.status_code == 200:
                response.json()
            statuses[response.status_code] += 1

    async def calls(http: httpx.AsyncClient) -> None:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))

    async with httpx.AsyncClient(base_url=base_url, headers={"API-Key": api_key}) as http:
        speed = await _timed(queries, calls(http))
    if set(statuses) - {200, 404}:
        raise RuntimeError(f"bare loop: unexpected statuses {dict(statuses)}")
    return speed


@dataclass(frozen=True)
class Overhead:
    requests: int
    ours: list[Speed]
    bare: list[Speed]

    @property
    def ratio(self) -> float:
        return max(s.per_s for s in self.ours) / max(s.per_s for s in self.bare)

    @property
    def cpu_ratio(self) -> float:
        """Bare loop's CPU per request over ours (1 = same cost)."""
        return min(s.cpu_us_per_request for s in self.bare) / min(
            s.cpu_us_per_request for s in self.ours
        )


def measure_overhead(server: SandboxServer, requests: int, rounds: int) -> Overhead:
    """Alternates the two loops, ``rounds`` runs each, fresh contacts every run."""
    ours: list[Speed] = []
    bare: list[Speed] = []
    for run in range(rounds):
        first = 2 * run * requests
        ours_queries = person_queries(first, requests)
        bare_queries = person_queries(first + requests, requests)
        ours.append(asyncio.run(_ours(server.base_url, server.api_key, ours_queries)))
        bare.append(asyncio.run(_bare(server.base_url, server.api_key, bare_queries)))
    return Overhead(requests, ours, bare)


# --- report ----------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    memory = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024**2:.0f} GB"
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}){memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, httpx {httpx.__version__}"
    )


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.2f} min"


def _percent(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def print_rate_table(results: list[Measured]) -> None:
    print(
        "| server | limit | run | N contacts | counted per min, steady | utilisation "
        "| answered 429 | time to N | lower bound | ratio | contacts per accepted request |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in results:
        row = m.row
        per_min = m.steady_per_min
        time_to_n = _minutes(m.time_to_n_s) + (" (projected)" if m.projected else "")
        if failed := sum(client.errors for client in m.clients):
            time_to_n += f" ({failed:,} failed)"
        ratio = "—" if m.time_to_n_s is None else f"{m.time_to_n_s / m.bound_s:.2f}×"
        print(
            f"| {SERVER_NAMES[row.algorithm]} | {row.limit}/min | {row.label} | {row.n:,} "
            f"| {'—' if per_min is None else f'{per_min:.1f}'} | {_percent(m.utilisation)} "
            f"| {_percent(m.waste, 2)} ({m.rate_limited:,} of {m.requests:,}) | {time_to_n} "
            f"| {_minutes(m.bound_s)} | {ratio} | {m.contacts_per_request:.1f} |"
        )


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_targets(results: list[Measured], overhead: Overhead) -> None:
    for m in results:
        row = m.row
        where = f"{SERVER_NAMES[row.algorithm]} {row.limit}/min, {row.label}"
        utilisation = m.utilisation
        if row.strategy == "single" and row.processes == 1:
            ok = (
                utilisation is not None
                and utilisation >= TARGET_UTILISATION
                and m.waste <= TARGET_WASTE
            )
            print(
                f"- {_verdict(ok)} {where}: utilisation {_percent(utilisation)} "
                f"(≥ {TARGET_UTILISATION:.0%}), 429s {_percent(m.waste, 2)} (≤ {TARGET_WASTE:.1%})"
            )
        elif row.processes > 1:
            ok = (
                utilisation is not None
                and utilisation >= TARGET_SHARED_UTILISATION
                and m.waste <= TARGET_SHARED_WASTE
            )
            print(
                f"- {_verdict(ok)} {where}: utilisation together {_percent(utilisation)} "
                f"(≥ {TARGET_SHARED_UTILISATION:.0%}), 429s {_percent(m.waste, 2)} "
                f"(≤ {TARGET_SHARED_WASTE:.0%})"
            )
        elif row.strategy == "bulk" and row.bulk_cost == "request":
            ok = m.contacts_per_request >= TARGET_CONTACTS_PER_REQUEST
            print(
                f"- {_verdict(ok)} {where}: {m.contacts_per_request:.1f} contacts per accepted "
                f"request (≥ {TARGET_CONTACTS_PER_REQUEST})"
            )
    ok = overhead.ratio >= TARGET_OVERHEAD_RATIO
    print(
        f"- {_verdict(ok)} client overhead: our client at {overhead.ratio:.0%} of a bare httpx "
        f"loop's requests per second (≥ {TARGET_OVERHEAD_RATIO:.0%})"
    )


def print_overhead_table(overhead: Overhead) -> None:
    rounds = len(overhead.ours)
    print(
        f"| unlimited sandbox, 0 ms latency, {overhead.requests:,} single calls per run, "
        f"concurrency {CONCURRENCY} | requests/s, best of {rounds} | each run "
        "| client CPU per request, best |"
    )
    print("|---|---:|---:|---:|")
    for name, speeds in (
        ("bare `httpx.AsyncClient` loop", overhead.bare),
        ("our client (`EnrichmentClient`, single calls)", overhead.ours),
    ):
        print(
            f"| {name} | {max(s.per_s for s in speeds):,.0f} "
            f"| {' / '.join(f'{s.per_s:,.0f}' for s in speeds)} "
            f"| {min(s.cpu_us_per_request for s in speeds):,.0f} µs |"
        )
    print(
        f"| ours / bare | **{overhead.ratio:.0%}** (target ≥ {TARGET_OVERHEAD_RATIO:.0%}) | "
        f"| bare / ours: {overhead.cpu_ratio:.0%} |"
    )


def print_client_view(results: list[Measured]) -> None:
    print(
        "| server | limit | run | client calls | 429s seen | retries | throttle waits "
        "| waited (s) | errors | late start (s) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for m in results:
        c = m.clients
        print(
            f"| {SERVER_NAMES[m.row.algorithm]} | {m.row.limit}/min | {m.row.label} "
            f"| {sum(x.requests for x in c):,} | {sum(x.rate_limited for x in c):,} "
            f"| {sum(x.retries for x in c):,} | {sum(x.throttle_waits for x in c):,} "
            f"| {sum(x.throttle_wait_s for x in c):,.0f} | {sum(x.errors for x in c):,} "
            f"| {max(x.late_start_s for x in c):.2f} |"
        )


def _log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- orchestration ---------------------------------------------------------------------------


def next_start(now: float) -> float:
    """One second into the next minute window, so the warm-up window is a whole one."""
    boundary = (now // WINDOW_S + 1) * WINDOW_S
    if boundary - now < 3:
        boundary += WINDOW_S
    return boundary + 1


def run(minutes: int, overhead_requests: int) -> int:
    rows = plan_rows(minutes)
    # Room for a client that paces a token bucket at its refill rate from the start (its N is
    # sized for one that spends the initial fill at once) to finish at about 97% of the limit.
    deadline_s = (minutes + 2.5) * WINDOW_S
    shared_mode = supports_shared_state()
    shared_dirs: list[str] = []
    servers: list[SandboxServer] = []
    workers: dict[Row, list[WorkerProcess]] = {}
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    try:
        _log(f"starting {len(rows) + 1} sandbox servers")
        unlimited = SandboxServer(
            rate_limit=None, algorithm="fixed_window", bulk_cost="request", latency_ms=0
        )
        servers.append(unlimited)
        by_row: dict[Row, SandboxServer] = {}
        for row in rows:
            by_row[row] = SandboxServer(
                rate_limit=row.limit,
                algorithm=row.algorithm,
                bulk_cost=row.bulk_cost,
                latency_ms=LATENCY_MS,
            )
            servers.append(by_row[row])
        ready_by = time.monotonic() + READY_TIMEOUT_S
        for server in servers:
            server.wait_ready(ready_by)

        _log("starting the client processes")
        for row in rows:
            state_dir = None
            if row.processes > 1 and shared_mode:
                state_dir = tempfile.mkdtemp(prefix="bench-rate-limit-")
                shared_dirs.append(state_dir)
            shares = [
                row.n // row.processes + (i < row.n % row.processes) for i in range(row.processes)
            ]
            workers[row] = [
                WorkerProcess(
                    WorkerSpec(
                        strategy=row.strategy,
                        base_url=by_row[row].base_url,
                        api_key=by_row[row].api_key,
                        first=sum(shares[:i]),
                        count=share,
                        deadline_s=deadline_s,
                        shared_state_dir=state_dir,
                    )
                )
                for i, share in enumerate(shares)
            ]
        ready_by = time.monotonic() + READY_TIMEOUT_S
        for processes in workers.values():
            for worker in processes:
                worker.wait_ready(ready_by)

        _log(
            f"client overhead: {overhead_requests:,} calls x {OVERHEAD_ROUNDS} runs each, "
            "unlimited sandbox"
        )
        overhead = measure_overhead(unlimited, overhead_requests, OVERHEAD_ROUNDS)

        start_at = next_start(time.time())
        deadline_at = start_at + deadline_s
        _log(
            f"rate-limited runs start at {datetime.fromtimestamp(start_at):%H:%M:%S}, "
            f"all done by {datetime.fromtimestamp(deadline_at):%H:%M:%S} at the latest"
        )
        for processes in workers.values():
            for worker in processes:
                worker.start(start_at)
        clients = {
            row: [worker.result(timeout_s=deadline_at - time.time() + 60) for worker in processes]
            for row, processes in workers.items()
        }
        # Requests cut off at the deadline are logged when their answer's latency has passed.
        time.sleep(2 * LATENCY_MS / 1000)
        results = [
            measure(row, by_row[row].stats(), clients[row], start_at, deadline_at) for row in rows
        ]
        _log("done")
    finally:
        for processes in workers.values():
            for worker in processes:
                worker.stop()
        for server in servers:
            server.stop()
        for state_dir in shared_dirs:
            shutil.rmtree(state_dir, ignore_errors=True)

    print(f"## make bench — measured {started_at:%Y-%m-%d %H:%M} UTC")
    print()
    print(f"Machine: {machine()}.")
    # Other work on the machine shows up as lost pace: say how busy it was.
    print(
        f"Load average (1 min) before / after the run: {load_before:.1f} / "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (the benchmark itself adds a little)."
    )
    print(
        f"Sandbox latency {LATENCY_MS} ms; our client: {CONCURRENCY} workers, bulk calls of "
        f"{BULK_SIZE}; {minutes} measured minute(s) per run after a warm-up window."
    )
    print(
        "Three runs sharing a key: "
        + (
            "each process passes the same `shared_state_dir` to `build_http_client`."
            if shared_mode
            else "independent processes (`build_http_client` has no `shared_state_dir`)."
        )
    )
    print()
    print_rate_table(results)
    print()
    print(
        "Judged from the sandbox's own log (`GET /_sandbox/stats`). Counted per min, steady: "
        "accepted requests per whole minute window after the warm-up one (a partial last window "
        "is dropped); utilisation is that over the limit (a token bucket can exceed 100% while "
        "a client that does not burst is still spending the bucket's initial fill). Answered "
        "429: over the whole run, warm-up included. Lower bound: when the server's limiter lets "
        f"the last request through (a token bucket starts full), or what {CONCURRENCY} requests "
        f"in flight at {LATENCY_MS} ms allow, whichever is later. Projected: stopped after "
        f"{deadline_s / 60:.1f} min, N extrapolated at the pace kept. Article baseline: 5 worker "
        "threads, batches of 5 with a 1.5 s pause between them, a 429 retried after 1 s, 2 s, "
        "4 s, ... (no header reading). * For information: a bulk call counted as one request "
        "per item; counted per min is in items."
    )
    print()
    print_overhead_table(overhead)
    print()
    print("Targets:")
    print_targets(results, overhead)
    print()
    print("Client-side view (diagnostic):")
    print()
    print_client_view(results)
    return 0


def main() -> int:
    if sys.argv[1:] == ["--worker"]:
        return worker_main()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--minutes", type=int, default=3, help="measured minutes per run, after warm-up (3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="one measured minute, fewer overhead calls"
    )
    parser.add_argument(
        "--overhead-requests", type=int, default=3000, help="calls per client-overhead run"
    )
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.overhead_requests = 1, 1000
    return run(args.minutes, args.overhead_requests)


if __name__ == "__main__":
    sys.exit(main())
