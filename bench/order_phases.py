"""Where one order's time goes outside Celery: lock, record+settle transaction, release.

    ./dev bench bench/order_phases.py [--orders 1500]

One process, a fresh PostgreSQL database and three local lock nodes; each order
is placed the uncontended way (fenced acquire, one transaction that records and
settles, release). Prints the median of each phase in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from sqlalchemy import text

from locking import NO_RETRY, Redlock
from tasks.db import create_db_engine, session_factory
from tasks.migrate import upgrade
from tasks.orders import record_pending
from tasks.settlement import settle
from tasks.validation import parse_order
from tests.pg import create_database, drop_database
from tests.sale import seed_products
from worker.redis_server import redis_servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=1500)
    args = parser.parse_args()
    url = create_database()
    upgrade(url)
    engine = create_db_engine(url)
    sessions = session_factory(engine)
    seed_products(engine, {"HOT": 10**6})
    phases: dict[str, list[float]] = {"acquire (fenced)": [], "record+settle": [], "release": []}
    phases["empty transaction"] = []
    try:
        with redis_servers(3) as servers:
            redlock = Redlock([server.url for server in servers])
            for _ in range(args.orders):
                order = parse_order(
                    {
                        "order_id": str(uuid.uuid4()),
                        "customer_id": "c",
                        "items": [{"sku": "HOT", "quantity": 1}],
                    }
                )
                t0 = time.perf_counter()
                lease = redlock.acquire(["sku:HOT"], ttl_ms=5000, fence=True, retry=NO_RETRY)
                t1 = time.perf_counter()
                with sessions.begin() as session:
                    record_pending(session, order)
                    settle(
                        session, skus=order.skus, fence=lease.fence, own_order=(order.order_id, 0.0)
                    )
                t2 = time.perf_counter()
                redlock.release(lease)
                t3 = time.perf_counter()
                with sessions.begin() as session:
                    session.execute(text("SELECT 1"))
                t4 = time.perf_counter()
                for name, spent in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    spent_ms = spent * 1000
                    phases[name].append(spent_ms)
            redlock.close()
    finally:
        engine.dispose()
        drop_database(url)
    for name, values in phases.items():
        print(f"{name:20s} p50 {statistics.median(values):6.3f} ms")


if __name__ == "__main__":
    main()
