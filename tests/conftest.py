"""Shared fixtures: real redis-server lock nodes, a real broker, a fresh PostgreSQL database.

Each fixture checks the service it needs when a test asks for it: a missing
service or binary fails that test with a message saying what is missing and how
to start it (never a skip), and a test that needs no service runs anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tasks.db import create_db_engine
from tasks.migrate import upgrade
from tests.pg import PostgreSQLUnavailable, create_database, drop_database
from tests.rabbitmq import amqp_url, rabbitmq_vhost
from worker.demo.redis_server import (
    RedisServer,
    RedisServerError,
    redis_server_binary,
    redis_servers,
)
from worker.demo.stack import LocalStack


def _require_redis_server() -> None:
    try:
        redis_server_binary()
    except RedisServerError as error:
        pytest.fail(f"redis-server is required by this test: {error}", pytrace=False)


def _new_database() -> str:
    try:
        return create_database()
    except PostgreSQLUnavailable as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture
def lock_nodes() -> Iterator[list[RedisServer]]:
    """Three fresh, independent redis-server lock nodes on free loopback ports."""
    _require_redis_server()
    with redis_servers(3) as servers:
        yield servers


@pytest.fixture
def node_urls(lock_nodes: list[RedisServer]) -> list[str]:
    """The redis:// URLs of the three lock nodes."""
    return [server.url for server in lock_nodes]


@pytest.fixture(scope="session")
def broker() -> Iterator[RedisServer]:
    """A redis-server used only as the Celery broker (never a lock node)."""
    _require_redis_server()
    with redis_servers(1) as servers:
        yield servers[0]


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test, dropped afterwards."""
    url = _new_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database with no schema (for migration tests)."""
    url = _new_database()
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
    _require_redis_server()
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
