"""What an end-to-end run reads from the stack: per-order counters, and the waits for its ends.

Used by `bench.e2e_bench` and `bench.profile_e2e`.
"""

from __future__ import annotations

import time

import redis
from sqlalchemy import Engine, text


def order_stats(engine: Engine) -> dict[str, float]:
    """Share of orders decided by another task's settlement (flat combining), and of
    orders that needed more than one delivery (task retries)."""
    query = text(
        "SELECT avg(CASE WHEN lock_wait_ms IS NULL THEN 1.0 ELSE 0.0 END),"
        " avg(CASE WHEN attempts > 1 THEN 1.0 ELSE 0.0 END) FROM orders"
    )
    with engine.connect() as connection:
        combined, retried = connection.execute(query).one()
    return {"settled_by_another": float(combined), "retried": float(retried)}


def command_calls(url: str) -> dict[str, int]:
    """Return the calls of each command a redis-server has served (INFO commandstats)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def calls_per_order(
    before: list[dict[str, int]], after: list[dict[str, int]], orders: int
) -> dict[str, float]:
    """Return the commands per order served by a group of servers between two readings.

    The harness's own commands (INFO, and LLEN/HLEN polls of the broker) are included.
    """
    totals: dict[str, int] = {}
    for old, new in zip(before, after, strict=True):
        for name, calls in new.items():
            totals[name] = totals.get(name, 0) + calls - old.get(name, 0)
    return {name: calls / orders for name, calls in sorted(totals.items()) if calls}


#: Counters of pg_stat_database read before and after a run.
PG_COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_hit",
)


def pg_counters(engine: Engine) -> dict[str, float]:
    """Return this database's pg_stat_database counters (and its row lock waits: none kept)."""
    query = text(
        f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = current_database()"
    )
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = connection.execute(query).one()
    return {name: float(value) for name, value in zip(PG_COUNTERS, row, strict=True)}


def wait_consumption_started(broker_url: str, queued: int, timeout_s: float = 120) -> float:
    client = redis.Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.llen("celery") < queued:
            return time.monotonic()
        time.sleep(0.001)
    raise TimeoutError("no worker took a message")


#: How often the end of a run is checked. Each check of ours is a query that costs
#: PostgreSQL CPU the workers would use; 20 ms is under 0.5% of a run's length.
POLL_S = 0.02


def wait_queue_drained(broker_url: str, timeout_s: float = 600) -> float:
    client = redis.Redis.from_url(broker_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.llen("celery") == 0 and client.hlen("unacked") == 0:
            return time.monotonic()
        time.sleep(POLL_S)
    raise TimeoutError("queue not drained")


def wait_decided(engine: Engine, count: int, timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    query = text("SELECT count(*) FROM orders WHERE status NOT IN ('pending', 'accepted')")
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            if connection.execute(query).scalar_one() >= count:
                return time.monotonic()
            connection.commit()
            time.sleep(POLL_S)
    raise TimeoutError("orders not decided")
