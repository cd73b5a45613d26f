"""The flash-sale invariants on the embedded default: a SQLite file shared by several workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tasks.db import create_db_engine
from tasks.migrate import upgrade
from tests.sale import (
    check_invariants,
    enqueue,
    producer,
    random_carts,
    seed_products,
    wait_until_decided,
)
from worker.demo.stack import LocalStack

STOCK = {"HOT": 60, "WARM": 80, "COLD": 100}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database file of the test's own."""
    url = f"sqlite:///{tmp_path / 'sale.sqlite3'}"
    upgrade(url)
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """The engine the workers use too (WAL, BEGIN IMMEDIATE)."""
    engine = create_db_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.mark.slow
def test_sqlite_sale_sells_exactly_the_stock(sqlite_url: str, sqlite_engine: Engine) -> None:
    seed_products(sqlite_engine, STOCK)
    with LocalStack(env={"DATABASE_URL": sqlite_url}) as stack:
        stack.start_lock_nodes(3)
        stack.start_broker()
        workers = [stack.start_worker(concurrency=2, wait=False) for _ in range(2)]
        for worker in workers:
            stack.wait_ready(worker)
        payloads = random_carts(800, list(STOCK), max_lines=3, max_quantity=3, seed=11)
        ids = enqueue(producer(stack.env["CELERY_BROKER_URL"]), payloads)
        wait_until_decided(sqlite_engine, ids, timeout_s=120)
        report = check_invariants(sqlite_engine, ids)
        logs = "".join(worker.log() for worker in workers)
    assert report.orders == 800
    assert sum(report.by_status.values()) == 800
    assert report.by_status.get("failed", 0) == 0, report.by_status
    # ~1600 lines of 1-3 units against 240 units: every SKU sells out, save at most
    # the last 2 units that no 3-unit line could take.
    for sku, units in STOCK.items():
        assert units - 2 <= report.units_sold[sku] <= units, (sku, report.units_sold)
    # SQLite serialises writers (BEGIN IMMEDIATE); none may have hit "database is locked".
    assert "database is locked" not in logs
