"""deploy/compose.yaml without Docker: every service's command from the file, run as a local
process against a real Postgres (embedded) with deploy/dagster.yaml as the instance, in the file's
dependency order. Then: the webserver serves the code location from the code server with its four
assets, the daemon heartbeats, both intake replicas answer and take a lead, a run launched from
the webserver goes through the daemon's queue and the code server to success, and Dagster's
storage (heartbeats, the run's events, the intake's landings) is in Postgres.

What is the compose file's and what is the test's: commands, environment, volumes and
dependencies are read from the file (after Compose's ${VAR} interpolation); the test only puts a
free local port in place of each service's port, 127.0.0.1 in place of service names in the
workspace, the embedded server's URL for DAGSTER_POSTGRES_URL, and a temp folder per named volume
in place of its mount path. A database-free test holds the Helm values and deploy/dagster.yaml
to the repo's own instance settings."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
import sqlalchemy
import yaml
from dagster import DagsterEventType

from enrich_pipeline.dagster_layer.assets import PIPELINE_ASSETS
from enrich_pipeline.dagster_layer.jobs import ENRICH_JOB_NAME
from enrich_pipeline.warehouse.postgres import is_postgres
from enrich_pipeline_tests.conftest import REPO

DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
# Every wait is bounded; each process's start-up takes a few seconds on a 2-core machine.
READY_TIMEOUT_S = 60.0
POLL_S = 0.2
STOP_TIMEOUT_S = 10.0
INTAKE_TOKEN = "deploy-test-token"
# Tables dagster-postgres creates for run, event log and schedule storage.
DAGSTER_TABLES = {"runs", "event_logs", "jobs", "job_ticks", "daemon_heartbeats", "instance_info"}


# --- Compose: interpolation and services --------------------------------------------------------

_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}`` and ``${VAR?error}``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if op in ("-", ":-"):
            return env[name] if present else arg
        if op in ("?", ":?"):
            if not present:
                raise ValueError(f"compose.yaml needs {name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


@dataclass
class Service:
    name: str
    command: list[str]
    environment: dict[str, str | None]
    depends_on: dict[str, str]  # service -> condition
    port: int | None  # the port its command listens on, if any
    mounts: dict[str, str]  # mount path -> named volume
    pid: str | None  # the service whose pid namespace it joins


def compose_services(env: Mapping[str, str]) -> dict[str, Service]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    pid_holders = {
        str(spec["pid"]).removeprefix("service:")
        for spec in compose["services"].values()
        if "pid" in spec
    }
    services = {}
    for name, spec in compose["services"].items():
        if "command" not in spec:
            continue  # an image run as it is (postgres): the embedded server stands in for it
        if name in pid_holders:
            continue  # holds a pid namespace: local processes share the machine's already
        command = [interpolate(str(part), env) for part in spec["command"]]
        environment = {
            key: None if value is None else interpolate(str(value), env)
            for key, value in (spec.get("environment") or {}).items()
        }
        depends_on = spec.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {other: "service_started" for other in depends_on}
        else:
            depends_on = {other: dep["condition"] for other, dep in depends_on.items()}
        port = _option(command, "-p", "--port")
        mounts = {
            target: source
            for source, target, *_ in (str(volume).split(":") for volume in spec.get("volumes", []))
            if source in (compose.get("volumes") or {})
        }
        pid = str(spec["pid"]).removeprefix("service:") if "pid" in spec else None
        services[name] = Service(
            name,
            command,
            environment,
            depends_on,
            None if port is None else int(port),
            mounts,
            pid,
        )
    return services


def _option(command: list[str], *names: str) -> str | None:
    for i, part in enumerate(command[:-1]):
        if part in names:
            return command[i + 1]
    return None


def _with_option(command: list[str], value: str, *names: str) -> list[str]:
    return [value if i > 0 and command[i - 1] in names else part for i, part in enumerate(command)]


def start_order(services: Mapping[str, Service]) -> list[str]:
    """Every service after the services it depends on (those the test starts itself)."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name in order:
            return
        for other in services[name].depends_on:
            if other in services:
                visit(other, (*path, name))
        order.append(name)

    for name in services:
        visit(name)
    return order


# --- Local processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int | None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit code {self.process.poll()}) ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )


@dataclass
class Deployment:
    """The compose file's services as local processes in one temp folder."""

    folder: Path
    database_url: str
    ports: dict[str, int] = field(default_factory=dict)  # service -> its free local port
    workspace: Path | None = None  # deploy/workspace.yaml, pointing at the local code server
    started: dict[str, Started] = field(default_factory=dict)

    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    def prepare(self, services: Mapping[str, Service]) -> None:
        self.dagster_home.mkdir(parents=True)
        shutil.copy(DEPLOY / "dagster.yaml", self.dagster_home / "dagster.yaml")
        (self.folder / "logs").mkdir()
        self.ports.update({name: free_port() for name, s in services.items() if s.port})
        # The workspace the webserver and the daemon load: the code server's service name and
        # port in the compose network become 127.0.0.1 and its local port.
        workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text(encoding="utf-8"))
        for entry in workspace["load_from"]:
            server = entry["grpc_server"]
            assert server["host"] in services, f"workspace.yaml names no service: {server}"
            assert server["port"] == services[server["host"]].port, "not the code server's port"
            server["port"] = self.ports[server["host"]]
            server["host"] = "127.0.0.1"
        self.workspace = self.folder / "workspace.yaml"
        self.workspace.write_text(yaml.safe_dump(workspace), encoding="utf-8")

    def local_command(self, service: Service) -> list[str]:
        command = list(service.command)
        executable = BIN / command[0]
        assert executable.exists(), f"{service.name}: {command[0]} is not installed"
        command[0] = str(executable)
        if service.port is not None:
            command = _with_option(command, str(self.ports[service.name]), "-p", "--port")
        if _option(command, "-w", "--workspace") is not None:
            command = _with_option(command, str(self.workspace), "-w", "--workspace")
        return command

    def local_environment(self, service: Service) -> dict[str, str]:
        env = dict(os.environ)  # the test's isolated settings: state in the test's temp folder
        for key, value in service.environment.items():
            if value is None:
                continue  # passed on from the shell when set there: the test's value, if any
            for target, volume in service.mounts.items():
                if value == target or value.startswith(target + "/"):
                    value = str(self.folder / "volumes" / volume) + value[len(target) :]
            env[key] = value
        if "DAGSTER_POSTGRES_URL" in env:
            assert env["DAGSTER_POSTGRES_URL"].startswith("postgresql+psycopg2://")
            env["DAGSTER_POSTGRES_URL"] = self.database_url
        if is_postgres(service.environment.get("ENRICH_WAREHOUSE_URL") or ""):
            env["ENRICH_WAREHOUSE_URL"] = self.database_url  # beside Dagster's tables here
        env["DAGSTER_HOME"] = str(self.dagster_home)
        return env

    def start(self, service: Service) -> Started:
        log = self.folder / "logs" / f"{service.name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.local_command(service),
                env=self.local_environment(service),
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, children included
            )
        started = Started(service.name, process, log, self.ports.get(service.name))
        self.started[service.name] = started
        return started

    def logs(self) -> str:
        return "\n".join(started.tail() for started in self.started.values())

    def wait_until(self, what: str, check: Callable[[], Any]) -> Any:
        """Polls ``check`` until it returns something truthy, at most READY_TIMEOUT_S; fails at
        once, with the logs, if a process has exited."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_error: BaseException | None = None
        while True:
            for started in self.started.values():
                if started.process.poll() is not None:
                    pytest.fail(f"{started.name} exited while waiting for {what}\n{self.logs()}")
            try:
                result = check()
            except Exception as error:
                result, last_error = None, error
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what} ({last_error!r})\n{self.logs()}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM to every process group, SIGKILL to whatever still runs after STOP_TIMEOUT_S
        (descendants that left the group included)."""
        processes = []
        for started in self.started.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                leader = psutil.Process(started.process.pid)
                processes += [leader, *leader.children(recursive=True)]
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.process.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(processes, timeout=STOP_TIMEOUT_S)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        for started in self.started.values():
            started.process.wait(timeout=STOP_TIMEOUT_S)


# --- Readiness and checks -----------------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def http_post(port: int, path: str, body: Any, headers: Mapping[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def graphql(port: int, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer["errors"]
    return answer["data"]


def grpc_serving(port: int) -> bool:
    from dagster._grpc.client import DagsterGrpcClient

    # It prints the gRPC error while nothing listens yet.
    with contextlib.redirect_stdout(io.StringIO()):
        return DagsterGrpcClient(port=port, host="127.0.0.1").health_check_query() == "SERVING"


def is_ready(deployment: Deployment, service: Service) -> bool:
    """What compose.yaml's healthchecks ask, asked from here."""
    port = deployment.ports.get(service.name)
    program = Path(service.command[0]).name
    if program == "dagster" and service.command[1:3] in (["code-server", "start"], ["api", "grpc"]):
        return grpc_serving(port)
    if program == "dagster-webserver":
        return http_get(port, "/server_info")[0] == 200
    if program == "enrich-pipeline" and service.command[1] == "serve":
        return http_get(port, "/healthz")[0] == 200
    return True  # the daemon: its heartbeats are checked below


LOCATION_QUERY = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename
      ... on RepositoryLocation { repositories { name assetNodes {
        assetKey { path } isMaterializable } } }
      ... on PythonError { message } } } } } }
"""

DAEMON_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }
"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }
"""

RUN_STATUS = """
query Status($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }
"""


def loaded_location(port: int) -> dict[str, Any] | None:
    entries = graphql(port, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]
    assert len(entries) == 1, entries
    entry = entries[0]
    location = entry["locationOrLoadError"]
    assert location is None or location["__typename"] != "PythonError", location["message"]
    return entry if entry["loadStatus"] == "LOADED" and location is not None else None


def finished_run(port: int, run_id: str) -> str | None:
    status = graphql(port, RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


def landed_emails(engine: sqlalchemy.Engine, at_least: int) -> list[str] | None:
    """The emails in ``raw_contacts`` (the warehouse shares Dagster's database here), once there
    are that many."""
    with engine.connect() as connection:
        if "raw_contacts" not in sqlalchemy.inspect(connection).get_table_names():
            return None
        found = list(
            connection.execute(
                sqlalchemy.text("SELECT email FROM raw_contacts ORDER BY email")
            ).scalars()
        )
    return found if len(found) >= at_least else None


def landings(engine: sqlalchemy.Engine, at_least: int) -> bool:
    """Whether ``raw_contacts`` has at least that many landings from the intake: runless
    materialisations, with the landing replica's source in their metadata."""
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text(
                "SELECT event FROM event_logs WHERE run_id = '' AND asset_key = :key "
                "AND dagster_event_type = :kind"
            ),
            {
                "key": json.dumps(["raw_contacts"]),
                "kind": DagsterEventType.ASSET_MATERIALIZATION.value,
            },
        ).scalars()
        return len(list(rows)) >= at_least


def daemons_healthy(port: int) -> list[dict[str, Any]] | None:
    statuses = graphql(port, DAEMON_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
    required = [status for status in statuses if status["required"]]
    return required if required and all(status["healthy"] for status in required) else None


@pytest.fixture
def deployment(tmp_path: Path, postgres_database: str) -> Iterator[Deployment]:
    started = Deployment(tmp_path / "deploy", postgres_database)
    try:
        yield started
    finally:
        started.stop()


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_compose_and_helm_run_the_code_location_with_the_repo_instance_settings() -> None:
    """Database-free: deploy/dagster.yaml keeps the repo's launcher, pool limit and run
    monitoring, and compose.yaml gives the launcher's health check one pid namespace; the Helm
    values serve the same module and set the same limits in the chart's keys; both reach Postgres
    with the driver named."""
    repo_instance, deploy_instance = _yaml(REPO / "dagster.yaml"), _yaml(DEPLOY / "dagster.yaml")
    helm = _yaml(DEPLOY / "helm-values.yaml")
    services = compose_services({"ENRICH_INTAKE_TOKEN": INTAKE_TOKEN})
    code_server = services["code-server"]

    # Run monitoring (in the daemon) checks the pids of runs (children of the code server): the
    # two share a pid namespace. In-flight claims live in Postgres, so the intake needs none.
    namespaces = {name: service.pid for name, service in services.items()}
    assert namespaces == {
        "code-server": "pids",
        "daemon": "pids",
        "webserver": None,
        "intake-1": None,
        "intake-2": None,
    }
    assert is_postgres(code_server.environment["ENRICH_WAREHOUSE_URL"])

    (user_code,) = helm["dagster-user-deployments"]["deployments"]
    module = _option(code_server.command, "-m", "--module-name")
    assert module == "enrich_pipeline.definitions"
    assert _option(user_code["codeServerArgs"], "-m", "--module-name") == module

    for key in ("run_launcher", "concurrency", "run_monitoring"):
        assert deploy_instance[key] == repo_instance[key], key
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    monitoring = helm["dagsterDaemon"]["runMonitoring"]
    assert monitoring["enabled"]
    assert (
        monitoring["freeSlotsAfterRunEndSeconds"]
        == repo_instance["run_monitoring"]["free_slots_after_run_end_seconds"]
    )
    assert (
        helm["concurrency"]["pools"]["defaultLimit"]
        == repo_instance["concurrency"]["pools"]["default_limit"]
    )

    assert deploy_instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    scheme = code_server.environment["DAGSTER_POSTGRES_URL"].split("://")[0]
    assert scheme == helm["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert helm["postgresql"]["enabled"] is False


@pytest.mark.postgres
@pytest.mark.slow
def test_the_compose_services_run_as_local_processes_on_postgres(
    deployment: Deployment, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENRICH_INTAKE_TOKEN", INTAKE_TOKEN)
    services = compose_services(os.environ)
    programs = {name: Path(s.command[0]).name for name, s in services.items()}
    assert sorted(programs.values()) == sorted(
        ["dagster", "dagster-webserver", "dagster-daemon", "enrich-pipeline", "enrich-pipeline"]
    ), programs
    deployment.prepare(services)

    # Compose's order: a service starts once those it depends on are started (or healthy).
    for name in start_order(services):
        for other, condition in services[name].depends_on.items():
            if other in deployment.started and condition == "service_healthy":
                deployment.wait_until(
                    f"{other} to be healthy", partial(is_ready, deployment, services[other])
                )
        deployment.start(services[name])
    for name in deployment.started:
        deployment.wait_until(f"{name} to be ready", partial(is_ready, deployment, services[name]))

    webserver = next(s for n, s in deployment.started.items() if programs[n] == "dagster-webserver")

    # The webserver serves the code location from the code server, with the four assets.
    entry = deployment.wait_until(
        "the code location to load", lambda: loaded_location(webserver.port)
    )
    assert entry["name"] == "enrich_pipeline"
    (repository,) = entry["locationOrLoadError"]["repositories"]
    materializable = {
        "/".join(node["assetKey"]["path"])
        for node in repository["assetNodes"]
        if node["isMaterializable"]
    }
    assert materializable == {asset.key.to_user_string() for asset in PIPELINE_ASSETS}

    # The daemon heartbeats: every daemon this instance needs (run monitoring among them).
    required = deployment.wait_until(
        "the daemon's heartbeats", lambda: daemons_healthy(webserver.port)
    )
    assert "MONITORING" in {status["daemonType"] for status in required}

    # Both intake replicas answer, and each takes a lead (with the compose file's token) into the
    # one journal and warehouse in Postgres.
    intakes = [s for n, s in deployment.started.items() if programs[n] == "enrich-pipeline"]
    assert len(intakes) == 2
    for i, intake in enumerate(intakes):
        status, body = http_get(intake.port, "/healthz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"
        lead = {"Email": f"ada.{i}@analytical-engines.io", "First Name": "Ada"}
        bearer = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
        status, body = http_post(intake.port, "/v1/leads", lead, bearer)
        assert status == 202, body
    assert not list(deployment.folder.rglob("*.sqlite3")), "a journal or claims file, not Postgres"

    # A run of the job over today, launched from the webserver: queued, dequeued by the daemon,
    # launched by the project's launcher in the code server, executed there.
    params = {
        "selector": {
            "repositoryLocationName": entry["name"],
            "repositoryName": repository["name"],
            "jobName": ENRICH_JOB_NAME,
        },
        "runConfigData": {},
        "executionMetadata": {
            "tags": [{"key": "dagster/partition", "value": datetime.now(UTC).date().isoformat()}]
        },
    }
    launched = graphql(webserver.port, LAUNCH_RUN, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = deployment.wait_until("the run to end", partial(finished_run, webserver.port, run_id))
    assert status == "SUCCESS", deployment.logs()

    # Dagster's storage is in Postgres: dagster-postgres's tables, with the daemon's heartbeats,
    # the run's events and the landings on raw_contacts (runless events the intake
    # records in the instance) in them, and no SQLite storage under DAGSTER_HOME.
    engine = sqlalchemy.create_engine(postgres_database)
    try:
        assert DAGSTER_TABLES.issubset(sqlalchemy.inspect(engine).get_table_names())
        with engine.connect() as connection:
            beating = connection.execute(
                sqlalchemy.text("SELECT DISTINCT daemon_type FROM daemon_heartbeats")
            ).scalars()
            assert {status["daemonType"] for status in required} <= set(beating)
            events = connection.execute(
                sqlalchemy.text(
                    "SELECT dagster_event_type, asset_key FROM event_logs WHERE run_id = :run_id"
                ),
                {"run_id": run_id},
            ).all()
        # One journal: whichever replica's mover comes first lands a lead, each once, in the
        # one warehouse.
        deployment.wait_until("both leads to land", partial(landed_emails, engine, 2))
        assert landed_emails(engine, 2) == [f"ada.{i}@analytical-engines.io" for i in range(2)]
        assert landings(engine, 1)
    finally:
        engine.dispose()
    assert DagsterEventType.RUN_SUCCESS.value in {kind for kind, _ in events}
    materialized = {
        "/".join(json.loads(key))
        for kind, key in events
        if kind == DagsterEventType.ASSET_MATERIALIZATION.value
    }
    assert materialized == {asset.key.to_user_string() for asset in PIPELINE_ASSETS}
    assert not list(deployment.dagster_home.rglob("*.db")), "SQLite storage under DAGSTER_HOME"
