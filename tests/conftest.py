"""Shared fixtures: real redis-server lock nodes, a real broker, a fresh PostgreSQL database.

A missing service or binary stops the whole run with a message saying what is
missing and how to start it; nothing is skipped silently.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psycopg2
import pytest
from sqlalchemy import Engine

from tasks.db import create_db_engine
from tasks.migrate import upgrade
from tests.pg import PG_ADMIN_URL, create_database, drop_database
from tests.rabbitmq import amqp_url, rabbitmq_vhost
from worker.redis_server import INSTALL_HINT, RedisServer, redis_servers
from worker.stack import LocalStack


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


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    url = create_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database with no schema (for migration tests)."""
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's migrated database."""
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def stack(database_url: str) -> Iterator[LocalStack]:
    """Three lock nodes and a broker (no workers yet) around the test's database.

    Start workers with ``stack.start_worker(concurrency=2)``; everything is stopped
    at the end of the test.
    """
    with LocalStack(env={"DATABASE_URL": database_url}) as local:
        local.start_lock_nodes(3)
        local.start_broker()
        yield local


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """The amqp:// URL of a fresh RabbitMQ vhost of this test, deleted afterwards."""
    with rabbitmq_vhost() as vhost:
        yield amqp_url(vhost)


@pytest.fixture
def amqp_stack(database_url: str, rabbitmq_url: str) -> Iterator[LocalStack]:
    """Three lock nodes around the test's database, with RabbitMQ (own vhost) as broker."""
    with LocalStack(env={"DATABASE_URL": database_url, "CELERY_BROKER_URL": rabbitmq_url}) as local:
        local.start_lock_nodes(3)
        yield local
