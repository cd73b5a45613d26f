"""Where one order's time goes outside Celery: lock, record+settle step, release.

    ./dev bench bench/order_phases.py [--orders 1500]

One process, a fresh PostgreSQL database and three local lock nodes; each order
is placed the uncontended way (fenced acquire, one autocommitted statement that
records and settles, release without waiting), then the same work is timed the
way it ran before (a transaction of two statements, a confirmed release) and
the bare costs of an empty statement and an empty transaction. Prints the median
of each phase in milliseconds.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
import uuid

from sqlalchemy import text

from locking import NO_RETRY, Redlock
from tasks.db import create_db_engine, session_factory
from tasks.migrate import upgrade
from tasks.pg_store import PostgresOrderStore, record_pending
from tasks.store import token_digest
from tasks.validation import OrderRequest, parse_order
from tests.domain import SETTLE_FUNCTION
from tests.pg import create_database, drop_database
from tests.sale import seed_products
from worker.demo.redis_server import redis_servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1500)
    args = parser.parse_args()
    url = create_database()
    upgrade(url)
    engine = create_db_engine(url)
    sessions = session_factory(engine)
    store = PostgresOrderStore(engine=engine)  # disposed with the process
    statements = create_db_engine(url, autocommit=True)
    seed_products(engine, {"HOT": 10**6})
    names = [
        "acquire (fenced)",
        "record+settle, 1 statement",
        "release, not awaited",
        "record+settle, transaction",
        "release, confirmed",
        "empty statement",
        "empty transaction",
    ]
    phases: dict[str, list[float]] = {name: [] for name in names}
    try:
        with redis_servers(3) as servers:
            redlock = Redlock([server.url for server in servers])
            for _ in range(args.orders):
                marks = [time.perf_counter()]
                lease = redlock.acquire(["sku:HOT"], ttl_ms=5000, fence=True, retry=NO_RETRY)
                marks.append(time.perf_counter())
                store.settle(
                    new_order(),
                    record=True,
                    fence=lease.fence,
                    lease_token=lease.token,
                    wait_ms=0.0,
                    budget_ms=4000.0,
                )
                marks.append(time.perf_counter())
                redlock.release(lease, confirm=False)
                marks.append(time.perf_counter())
                lease = redlock.acquire(["sku:HOT"], ttl_ms=5000, fence=True, retry=NO_RETRY)
                marks.append(time.perf_counter())
                order = new_order()
                with sessions.begin() as session:
                    record_pending(session, order)
                    session.execute(
                        SETTLE_FUNCTION,
                        {
                            "skus": list(order.skus),
                            "fence": lease.fence,
                            "token": token_digest(lease.token),
                            "limit": 500,
                            "own": order.order_id,
                            "wait": 0.0,
                        },
                    ).all()
                marks.append(time.perf_counter())
                redlock.release(lease)
                marks.append(time.perf_counter())
                with statements.connect() as connection:
                    connection.execute(text("SELECT 1"))
                marks.append(time.perf_counter())
                with sessions.begin() as session:
                    session.execute(text("SELECT 1"))
                marks.append(time.perf_counter())
                spans = [b - a for a, b in itertools.pairwise(marks)]
                del spans[3]  # the second acquire is the first one again
                for name, spent in zip(names, spans, strict=True):
                    phases[name].append(spent * 1000)
            redlock.close()
    finally:
        engine.dispose()
        drop_database(url)
    for name, values in phases.items():
        print(f"{name:28s} p50 {statistics.median(values):6.3f} ms")


def new_order() -> OrderRequest:
    return parse_order(
        {
            "order_id": str(uuid.uuid4()),
            "customer_id": "c",
            "items": [{"sku": "HOT", "quantity": 1}],
        }
    )


if __name__ == "__main__":
    main()
