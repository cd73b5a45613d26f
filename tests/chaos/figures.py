"""What a chaos scenario is judged by, read from the database alone.

`figures` counts the orders of a sale and reads oversold units and duplicate
movements from `worker.demo.audit.check_ledger` (the one ledger check);
`assert_sound` checks every invariant (`tests.sale.check_invariants`); the other
helpers read lock waits and decision windows. The observer engine is tagged so
that the scenario killing database connections spares it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from tasks.db import normalize_url
from tests.sale import check_invariants
from worker.demo.audit import check_ledger
from worker.demo.stats import percentile

#: application_name of the observer's connections (spared by pg_terminate_backend).
OBSERVER = "chaos-observer"

ANY_ID_SQL = "ANY(CAST(:ids AS uuid[]))"
#: SQL: decided in [:since, :until), either bound optional.
_DECIDED_IN_WINDOW = (
    "decided_at >= coalesce(CAST(:since AS timestamptz), '-infinity')"
    " AND decided_at < coalesce(CAST(:until AS timestamptz), 'infinity')"
)


@dataclass(frozen=True)
class Figures:
    """What happened to a sale's orders, read from the database.

    ``lost``: enqueued orders with no row or still pending at the end.
    ``oversold``: units confirmed beyond a SKU's initial stock, or stock below zero.
    ``duplicates``: stock movements beyond one per line of a confirmed order (or for
    an order that is not confirmed), plus units decremented without a movement.
    """

    orders: int
    confirmed: int
    rejected: int
    failed: int
    lost: int
    oversold: int
    duplicates: int


def observer_engine(url: str) -> Engine:
    """An engine without a pool whose connections carry the `OBSERVER` tag."""
    return create_engine(
        normalize_url(url),
        poolclass=NullPool,
        connect_args={"application_name": OBSERVER, "connect_timeout": 5},
    )


def scalar_rows(engine: Engine, sql: str, **params: object) -> list[tuple[Any, ...]]:
    """Run one read-only query on a fresh connection and return its rows."""
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql), params)]


def figures(engine: Engine, order_ids: Iterable[str]) -> Figures:
    """Count the outcome of the given orders and every stock anomaly in the database."""
    wanted = [str(uuid.UUID(order_id)) for order_id in order_ids]
    by_status = dict(
        scalar_rows(
            engine,
            f"SELECT status::text, count(*) FROM orders WHERE id = {ANY_ID_SQL} GROUP BY status",
            ids=wanted,
        )
    )
    ledger = check_ledger(engine)
    decided = sum(
        int(n) for status, n in by_status.items() if status not in ("pending", "accepted")
    )
    return Figures(
        orders=len(wanted),
        confirmed=int(by_status.get("confirmed", 0)),
        rejected=int(by_status.get("rejected", 0)),
        failed=int(by_status.get("failed", 0)),
        lost=len(wanted) - decided,
        oversold=ledger.oversold_units,
        duplicates=ledger.duplicate_movements,
    )


def decided_ids(engine: Engine, ids: list[str]) -> list[str]:
    """The ids among ``ids`` whose order has a row in a terminal status."""
    sql = (
        "SELECT id::text FROM orders WHERE status NOT IN ('pending', 'accepted') "
        f"AND id = {ANY_ID_SQL}"
    )
    return [str(row[0]) for row in scalar_rows(engine, sql, ids=ids)]


def assert_sound(engine: Engine, order_ids: list[str], result: Figures) -> None:
    """Fail unless nothing was lost, oversold or moved twice, and every invariant holds."""
    assert result.lost == 0, f"{result.lost} orders lost or still pending: {result}"
    assert result.oversold == 0, f"{result.oversold} units oversold: {result}"
    assert result.duplicates == 0, f"{result.duplicates} duplicate movements: {result}"
    check_invariants(engine, order_ids)


def fence_violations(engine: Engine) -> list[str]:
    """Return every way the ledger contradicts "each write carried a newer-or-equal fence".

    Per SKU, in movement id order (the commit order: one SKU's writers are serialised
    by its row lock), fences never decrease and are never missing; movements of one
    transaction (same ``at``, the transaction's start time) share one fence; and the
    product's fence is at least the highest fence in its ledger.
    """
    problems: list[str] = []
    rows = scalar_rows(engine, "SELECT sku, id, fence, at FROM stock_movements ORDER BY sku, id")
    highest: dict[str, int] = {}
    batch_fence: dict[tuple[str, object], int] = {}
    for sku, movement_id, fence, at in rows:
        if fence is None:
            problems.append(f"movement {movement_id} of {sku} has no fence")
            continue
        if batch_fence.setdefault((sku, at), fence) != fence:
            problems.append(f"movement {movement_id} of {sku}: two fences in one transaction")
        if fence < highest.get(str(sku), 0):
            problems.append(f"movement {movement_id} of {sku}: fence {fence} after a higher one")
        highest[str(sku)] = max(highest.get(str(sku), 0), int(fence))
    for sku, product_fence in scalar_rows(engine, "SELECT sku, fence FROM products"):
        if int(product_fence) < highest.get(str(sku), 0):
            problems.append(f"product {sku} fence {product_fence} below its ledger's")
    return problems


def lock_wait_percentile(
    engine: Engine, share: float, *, since: datetime | None = None, until: datetime | None = None
) -> tuple[float, int]:
    """Return the ``share`` percentile of orders.lock_wait_ms and how many orders have one.

    The percentile is `worker.demo.stats.percentile` (nearest rank), as everywhere else.

    :param since: only orders decided at or after this time.
    :param until: only orders decided before this time.
    """
    waits = sorted(
        float(wait)
        for (wait,) in scalar_rows(
            engine,
            "SELECT lock_wait_ms FROM orders"
            " WHERE status NOT IN ('pending', 'accepted') AND lock_wait_ms IS NOT NULL"
            f" AND {_DECIDED_IN_WINDOW}",
            since=since,
            until=until,
        )
    )
    return round(percentile(waits, share) or 0.0, 1), len(waits)


def decided_between(
    engine: Engine, statuses: Iterable[str], since: datetime, until: datetime | None = None
) -> int:
    """Count orders with one of ``statuses`` decided in [since, until)."""
    return int(
        scalar_rows(
            engine,
            "SELECT count(*) FROM orders"
            f" WHERE status::text = ANY(:statuses) AND {_DECIDED_IN_WINDOW}",
            statuses=list(statuses),
            since=since,
            until=until,
        )[0][0]
    )
