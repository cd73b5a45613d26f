"""The machinery of scenario 10 (tests/chaos/test_partitions.py): its sale, its groups, its figures.

Each group of workers reaches the lock nodes through links of its own
(tests/chaos/links.py) and has a HOT probe next to it (tests/chaos/leases.py);
these helpers start them, open the sale, and read from the database when orders
were decided and how many fenced settlements moved stock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine

from tests.chaos.figures import ANY_ID_SQL, scalar_rows
from tests.chaos.harness import FlashSale, stock_for
from tests.chaos.leases import Hold, Probes
from tests.chaos.links import Links
from worker.demo.stack import LocalStack, WorkerProcess

ORDERS = 200
TTL_MS = 1000
#: Workers of every scenario here: 1 s leases, so a lapsed lease frees the SKU quickly.
WORKER_ENV = {"REDLOCK_TTL_MS": str(TTL_MS)}
#: Orders arrive over ~2 s, so a partition meets orders as they come.
ARRIVALS_PER_S = 100.0


def now() -> datetime:
    """The current time in UTC, comparable with the orders' ``decided_at``."""
    return datetime.now(UTC)


def sale_of(stack: LocalStack, observer: Engine) -> FlashSale:
    return FlashSale(stack, observer, orders=ORDERS, stock=stock_for(ORDERS))


def start_groups(stack: LocalStack, envs: list[dict[str, str]]) -> list[WorkerProcess]:
    """Start one worker (2 processes) per group environment, all at once."""
    workers = [stack.start_worker(concurrency=2, extra_env=env, wait=False) for env in envs]
    for worker in workers:
        stack.wait_ready(worker)
    return workers


def open_two_sided_sale(
    stack: LocalStack,
    observer: Engine,
    links: list[Links],
    probes: Probes,
    env: dict[str, str],
    *,
    decided: float,
) -> FlashSale:
    """Start a worker and a HOT probe per group (A1, B1), open the sale, let it run.

    :param env: the workers' environment besides their group's lock nodes.
    :param decided: the share of the orders decided before this returns.
    """
    sale = sale_of(stack, observer)
    start_groups(stack, [{**env, **group.env()} for group in links])
    for group, name in zip(links, ("A1", "B1"), strict=True):
        probes.start(group.urls, name)
    sale.open(rate_per_s=ARRIVALS_PER_S)
    sale.wait_decided(decided)
    return sale


def first_decided_after(engine: Engine, since: datetime) -> datetime | None:
    """When the first order was confirmed or rejected at or after ``since``."""
    value = scalar_rows(
        engine,
        "SELECT min(decided_at) FROM orders"
        " WHERE status IN ('confirmed', 'rejected') AND decided_at >= :since",
        since=since,
    )[0][0]
    return value if isinstance(value, datetime) else None


def fenced_settlements(engine: Engine) -> int:
    """How many settlements under a lease moved stock (one fence, one transaction each)."""
    sql = "SELECT count(*) FROM (SELECT DISTINCT fence, at FROM stock_movements) AS s"
    return int(scalar_rows(engine, sql)[0][0])


def last_decided(engine: Engine, ids: list[str]) -> datetime:
    """When the last of the orders ``ids`` was decided."""
    sql = f"SELECT max(decided_at) FROM orders WHERE id = {ANY_ID_SQL}"
    value = scalar_rows(engine, sql, ids=ids)[0][0]
    assert isinstance(value, datetime), value
    return value


def granted_between(holds: list[Hold], holders: str, since_s: float, until_s: float) -> int:
    """How many leases probes whose name starts with ``holders`` got in [since_s, until_s]."""
    return sum(
        1 for h in holds if h.holder.startswith(holders) and since_s <= h.granted_s <= until_s
    )
