"""The embedded Postgres the `postgres` tests run against: a real server, reached with the
driver deploy/dagster.yaml names, and a database of each test's own."""

from __future__ import annotations

import pytest
import sqlalchemy

pytestmark = pytest.mark.postgres


def _scalar(url: str, query: str) -> object:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(query)).scalar_one()
    finally:
        engine.dispose()


def test_the_session_server_is_a_real_postgres_reached_through_psycopg2(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg2://")
    assert str(_scalar(postgres_url, "SHOW server_version")).startswith("18.")


def test_each_test_gets_an_empty_database_of_its_own(
    postgres_url: str, postgres_database: str
) -> None:
    name = sqlalchemy.engine.make_url(postgres_database).database
    assert name != sqlalchemy.engine.make_url(postgres_url).database
    assert _scalar(postgres_database, "SELECT current_database()") == name
    tables = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
    assert _scalar(postgres_database, tables) == 0
