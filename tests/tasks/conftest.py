"""Fixtures of the domain tests: each runs on PostgreSQL and on SQLite.

The domain has two implementations of recording and settling (PL/pgSQL functions
on PostgreSQL, SQLAlchemy statements elsewhere); the same tests hold for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from locking import Redlock
from tasks.db import create_db_engine, session_factory
from tasks.store import OrderStore, StoreOptions
from tasks.validation import OrderRequest
from tests.domain import migrated_database_url
from tests.domain import record as record_order
from worker.wiring import build_store

Record = Callable[..., OrderRequest]
MakeStore = Callable[..., OrderStore]


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh, migrated database: PostgreSQL, then a SQLite file."""
    engine = create_db_engine(migrated_database_url(request, request.param, tmp_path))
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """The session factory a worker process would use, on the test's database."""
    return session_factory(engine)


@pytest.fixture
def record(sessions: sessionmaker[Session]) -> Record:
    """Record a pending order in its own transaction: ``record({"A": 2}, customer=...)``."""
    return partial(record_order, sessions)


@pytest.fixture
def make_store(engine: Engine) -> Iterator[MakeStore]:
    """Build the `OrderStore` of the test's database; their pools are closed after."""
    made: list[OrderStore] = []

    def make(**options: Any) -> OrderStore:
        store = build_store(engine, StoreOptions(**options))
        made.append(store)
        return store

    yield make
    for store in made:
        store.dispose()


@pytest.fixture
def redlock(node_urls: list[str]) -> Iterator[Redlock]:
    """A Redlock over the test's three lock nodes."""
    lock = Redlock(node_urls)
    yield lock
    lock.close()
