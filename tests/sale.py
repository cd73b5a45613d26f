"""Helpers for end-to-end tests: seed a sale, enqueue orders, wait, check the invariants."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import Engine, func, select

from tasks.db import session_factory
from tasks.models import OPEN, Order, Product
from tasks.validation import TASK_NAME
from worker.demo.audit import check_ledger


def seed_products(engine: Engine, stock: Mapping[str, int]) -> None:
    """Create one product per SKU with the given stock."""
    with session_factory(engine).begin() as session:
        for sku, quantity in stock.items():
            session.add(Product(sku=sku, name=sku, stock=quantity, initial_stock=quantity, fence=0))


def producer(broker_url: str) -> Celery:
    """A bare Celery client, as a web app in another codebase would have."""
    app = Celery("web", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    return app


def random_carts(
    count: int, skus: list[str], *, max_lines: int = 3, max_quantity: int = 3, seed: int = 7
) -> list[dict[str, Any]]:
    """Return ``count`` valid order payloads: carts of 1..max_lines distinct SKUs."""
    rng = random.Random(seed)
    orders = []
    for _ in range(count):
        lines = rng.sample(skus, rng.randint(1, min(max_lines, len(skus))))
        items = [{"sku": sku, "quantity": rng.randint(1, max_quantity)} for sku in lines]
        orders.append(
            {
                "order_id": str(uuid.uuid4()),
                "customer_id": f"c{rng.randint(1, 500)}",
                "items": items,
            }
        )
    return orders


def enqueue(app: Celery, payloads: Iterable[Mapping[str, object]]) -> list[str]:
    """Send every payload with ``send_task`` by name; return the order ids."""
    ids = []
    for payload in payloads:
        app.send_task(TASK_NAME, kwargs=dict(payload))
        ids.append(str(payload.get("order_id")))
    return ids


def wait_until_decided(engine: Engine, order_ids: list[str], *, timeout_s: float = 180.0) -> None:
    """Wait until every order id has a row and none is pending; fail with counts if not."""
    wanted = {uuid.UUID(order_id) for order_id in order_ids}
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            rows = connection.execute(
                select(Order.status, func.count())
                .where(Order.id.in_(wanted))
                .group_by(Order.status)
            ).all()
        counts = {str(status): n for status, n in rows}
        open_orders = sum(counts.get(status.value, 0) for status in OPEN)
        if sum(counts.values()) == len(wanted) and not open_orders:
            return
        time.sleep(0.25)
    raise AssertionError(f"orders not all decided after {timeout_s} s: {counts} of {len(wanted)}")


@dataclass(frozen=True)
class SaleReport:
    """The outcome of a sale, after `check_invariants` passed."""

    orders: int
    by_status: dict[str, int]
    units_sold: dict[str, int]


def check_invariants(engine: Engine, order_ids: list[str]) -> SaleReport:
    """Assert every invariant of a sale and return its figures.

    Every enqueued id has exactly one row and none is pending; the ledger holds
    (`worker.demo.audit.check_ledger`: no stock below zero, per SKU initial - final
    == confirmed quantities == -sum(movements), one movement per line of each
    confirmed order and none for other orders).
    """
    wanted = {uuid.UUID(order_id) for order_id in order_ids}
    with session_factory(engine)() as session:
        statuses = dict(session.execute(select(Order.id, Order.status)).all())
        products = {p.sku: p.initial_stock - p.stock for p in session.scalars(select(Product))}
    missing = wanted - statuses.keys()
    assert not missing, f"{len(missing)} enqueued orders have no row"
    pending = [oid for oid, status in statuses.items() if status in OPEN]
    assert not pending, f"{len(pending)} orders still pending or accepted"
    problems = check_ledger(engine).problems
    assert not problems, "ledger broken:\n" + "\n".join(problems)
    by_status: dict[str, int] = {}
    for oid in wanted:
        key = str(statuses[oid].value if hasattr(statuses[oid], "value") else statuses[oid])
        by_status[key] = by_status.get(key, 0) + 1
    return SaleReport(orders=len(wanted), by_status=by_status, units_sold=products)
