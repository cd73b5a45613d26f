"""Shared fixtures: real redis-server lock nodes, a real broker, a fresh PostgreSQL database.

A missing service or binary stops the whole run with a message saying what is
missing and how to start it; nothing is skipped silently.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import psycopg2
import pytest

from worker.redis_server import INSTALL_HINT, RedisServer, redis_servers

#: The PostgreSQL server the tests create their database on (trust auth by default).
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_sessionstart(session: pytest.Session) -> None:
    if shutil.which("redis-server") is None:
        pytest.exit(f"redis-server is required by the tests; {INSTALL_HINT}", returncode=3)
    try:
        psycopg2.connect(PG_ADMIN_URL, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        pytest.exit(
            f"PostgreSQL is required by the tests and is not reachable at {PG_ADMIN_URL}: "
            f"{str(error).strip()} (start it, or set TEST_PG_ADMIN_URL)",
            returncode=3,
        )


@pytest.fixture
def lock_nodes() -> Iterator[list[RedisServer]]:
    """Three fresh, independent redis-server lock nodes on free loopback ports."""
    with redis_servers(3) as servers:
        yield servers


@pytest.fixture
def node_urls(lock_nodes: list[RedisServer]) -> list[str]:
    """The redis:// URLs of the three lock nodes."""
    return [server.url for server in lock_nodes]


@pytest.fixture(scope="session")
def broker() -> Iterator[RedisServer]:
    """A redis-server used only as the Celery broker (never a lock node)."""
    with redis_servers(1) as servers:
        yield servers[0]


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    name = f"flashsale_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
