"""Alembic migrations build exactly the models' schema, both ways, on PostgreSQL and SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command

from tasks import sql
from tasks.db import create_db_engine
from tasks.migrate import alembic_config, downgrade, upgrade
from tasks.models import Base
from tests.domain import TABLES, head_revision, schema


def enum_types(url: str) -> list[str]:
    """Return the PostgreSQL enum types of the database."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT typname FROM pg_type WHERE typtype = 'e'")
            return sorted(row[0] for row in rows)
    finally:
        engine.dispose()


def assert_no_model_diff(url: str) -> None:
    """`alembic check`: autogenerate finds nothing between the migrated schema and the models."""
    command.check(alembic_config(url))


def test_the_models_are_the_tables_the_migrations_create() -> None:
    assert set(Base.metadata.tables) == TABLES


def test_upgrade_builds_the_models_schema_on_postgresql(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    assert schema(empty_database_url) == (TABLES, head_revision())
    assert enum_types(empty_database_url) == ["order_status"]
    assert_no_model_diff(empty_database_url)


def test_upgrade_twice_is_harmless(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    upgrade(empty_database_url)
    assert schema(empty_database_url) == (TABLES, head_revision())


def test_downgrade_to_base_and_upgrade_again_on_postgresql(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    downgrade(empty_database_url, "base")
    assert schema(empty_database_url) == (set(), None)
    assert enum_types(empty_database_url) == []
    upgrade(empty_database_url)
    assert schema(empty_database_url) == (TABLES, head_revision())
    assert_no_model_diff(empty_database_url)


def test_upgrade_and_downgrade_on_a_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orders.sqlite3'}"
    upgrade(url)
    assert schema(url) == (TABLES, head_revision())
    assert_no_model_diff(url)
    downgrade(url, "base")
    assert schema(url) == (set(), None)
    upgrade(url)
    assert schema(url) == (TABLES, head_revision())


@pytest.mark.parametrize(
    "url",
    ["postgresql://user:p%40ss%25word@127.0.0.1:5432/db", "sqlite:///relative.sqlite3"],
)
def test_the_config_keeps_the_url_verbatim(url: str) -> None:
    assert alembic_config(url).get_main_option("sqlalchemy.url") == url


def deployed_functions(url: str) -> dict[str, list[str]]:
    """Return function name -> the bodies of every PostgreSQL function of that name."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT proname, prosrc FROM pg_proc WHERE proname LIKE 'flashsale%%'"
            ).all()
    finally:
        engine.dispose()
    found: dict[str, list[str]] = {}
    for name, body in rows:
        found.setdefault(name, []).append(body)
    return found


def test_the_deployed_functions_are_their_living_source(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    assert deployed_functions(empty_database_url) == {
        function: [sql.body(function)] for function in sql.FUNCTIONS
    }


def test_downgrade_to_0003_restores_its_functions_and_upgrade_redeploys_the_source(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url)
    downgrade(empty_database_url, "0003")
    deployed = deployed_functions(empty_database_url)
    assert sorted(deployed) == sorted(sql.FUNCTIONS)
    assert deployed["flashsale_settle"] != [sql.body("flashsale_settle")]
    upgrade(empty_database_url)
    assert deployed_functions(empty_database_url) == {
        function: [sql.body(function)] for function in sql.FUNCTIONS
    }
