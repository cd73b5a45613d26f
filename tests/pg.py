"""Throw-away PostgreSQL databases on the local server, for tests and benchmarks."""

from __future__ import annotations

import os
import uuid

import psycopg2
import psycopg2.extensions

#: The PostgreSQL server databases are created on (trust auth by default).
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class PostgreSQLUnavailable(RuntimeError):
    """The PostgreSQL server that tests create databases on does not answer."""


def admin_connection() -> psycopg2.extensions.connection:
    """Connect to `PG_ADMIN_URL`, or raise `PostgreSQLUnavailable` saying how to fix it."""
    try:
        return psycopg2.connect(PG_ADMIN_URL, connect_timeout=3)
    except psycopg2.OperationalError as error:
        raise PostgreSQLUnavailable(
            f"PostgreSQL is required by this test and is not reachable at {PG_ADMIN_URL}: "
            f"{str(error).strip()} (start it, or set TEST_PG_ADMIN_URL)"
        ) from None


def create_database() -> str:
    """Create an empty database with a unique name and return its URL."""
    name = f"flashsale_test_{uuid.uuid4().hex[:10]}"
    admin = admin_connection()
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


def drop_database(url: str) -> None:
    """Drop the database at ``url``, disconnecting whoever is still connected."""
    admin = admin_connection()
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    admin.close()
