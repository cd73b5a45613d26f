"""Alembic migrations build exactly the models' schema, both ways, on PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from tasks import sql
from tasks.db import create_db_engine
from tasks.migrate import alembic_config, downgrade, upgrade
from tasks.models import Base
from tests.domain import TABLES, head_revision, schema
from tests.sale import seed_products


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
    assert schema(empty_database_url) == (frozenset(), None)
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
    assert schema(url) == (frozenset(), None)
    upgrade(url)
    assert schema(url) == (TABLES, head_revision())


@pytest.mark.parametrize(
    "url",
    ["postgresql://user:p%40ss%25word@127.0.0.1:5432/db", "sqlite:///relative.sqlite3"],
)
def test_the_config_keeps_the_url_verbatim(url: str) -> None:
    assert alembic_config(url).get_main_option("sqlalchemy.url") == url


def deployed_functions(url: str) -> dict[str, str]:
    """Return signature -> body of every ``flashsale_*`` PostgreSQL function."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT oid::regprocedure::text, prosrc FROM pg_proc"
                " WHERE proname LIKE 'flashsale%%'"
            ).all()
    finally:
        engine.dispose()
    return {signature: body for signature, body in rows}


def living(signatures: dict[str, str]) -> dict[str, str]:
    """Return the deployed signature -> body of each function of tasks/sql, by its name."""
    return {signature: sql.body(name) for name, signature in signatures.items()}


#: The signatures of the living source's functions (revision 0006 onwards).
SIGNATURES = {
    "flashsale_record": "flashsale_record(uuid,text,text,text[],integer[])",
    "flashsale_settle": (
        "flashsale_settle(text[],bigint,text,integer,uuid,double precision,integer[],"
        "timestamp with time zone)"
    ),
    "flashsale_place": (
        "flashsale_place(uuid,text,text,text[],integer[],boolean,bigint,text,integer,"
        "double precision,double precision,integer)"
    ),
}


def test_the_deployed_functions_are_their_living_source(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    deployed = deployed_functions(empty_database_url)
    assert {signature: deployed.get(signature) for signature in SIGNATURES.values()} == living(
        SIGNATURES
    )
    # Revision 0003's two functions stay for the workers of the previous release.
    assert len(deployed) == len(SIGNATURES) + 2


def test_downgrade_to_0003_leaves_its_functions_and_upgrade_redeploys_the_source(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url, "0003")
    before = deployed_functions(empty_database_url)
    upgrade(empty_database_url)
    downgrade(empty_database_url, "0003")
    assert deployed_functions(empty_database_url) == before
    upgrade(empty_database_url)
    deployed = deployed_functions(empty_database_url)
    assert {signature: deployed.get(signature) for signature in SIGNATURES.values()} == living(
        SIGNATURES
    )


def test_downgrade_to_0005_restores_its_functions_and_status_index(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url, "0005")
    before = deployed_functions(empty_database_url)
    upgrade(empty_database_url)
    assert deployed_functions(empty_database_url) != before
    downgrade(empty_database_url, "0005")
    assert deployed_functions(empty_database_url) == before
    engine = create_db_engine(empty_database_url)
    try:
        indexes = {index["name"] for index in inspect(engine).get_indexes("orders")}
    finally:
        engine.dispose()
    assert "ix_orders_status" in indexes
    assert not indexes & {"ix_orders_pending", "ix_orders_accepted"}


def test_a_worker_of_the_previous_release_still_places_orders_after_0004(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url)
    engine = create_db_engine(empty_database_url)
    try:
        seed_products(engine, {"A": 2})
        with engine.begin() as connection:
            row = connection.execute(
                text(
                    "SELECT status FROM flashsale_place(:id, 'c1', 'h', ARRAY['A'], ARRAY[1],"
                    " true, 3, 500, 0.0, 5000.0, 20)"
                ),
                {"id": str(uuid.uuid4())},
            ).one()
    finally:
        engine.dispose()
    assert row.status == "confirmed"
