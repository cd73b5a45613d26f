"""The flash sale: thousands of orders on a few hot SKUs through 2 workers x 2 processes.

Also the contention budget: an order whose SKU stays locked by a foreign holder
ends ``failed`` (``lock_unavailable``) after its retries, never pending.
"""

from __future__ import annotations

import random
import uuid

from sqlalchemy import Engine, select

from tasks.models import Order, OrderStatus
from tests.domain import movements, order_row, payload, status, stock
from tests.e2e.shop import open_shop
from tests.locks import hold_lock_elsewhere, lock_values
from tests.sale import (
    check_invariants,
    enqueue,
    producer,
    random_carts,
    seed_products,
    wait_until_decided,
)
from worker.demo.stack import LocalStack

STOCK = {"HOT-1": 120, "HOT-2": 80, "HOT-3": 50, "WARM": 150}
#: Extra single-unit orders per SKU beyond its stock: they prove each SKU sells out.
SURPLUS = 5


def sale_orders(seed: int = 11) -> list[dict[str, object]]:
    """2,200 random carts of 1-3 lines and, per SKU, more one-unit orders than its stock."""
    carts = random_carts(2200, list(STOCK), max_lines=3, max_quantity=3, seed=seed)
    singles = [payload({sku: 1}) for sku, units in STOCK.items() for _ in range(units + SURPLUS)]
    orders = carts + singles
    random.Random(seed).shuffle(orders)
    return orders


def rejection_reasons(engine: Engine) -> set[str | None]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(Order.reason).where(Order.status == OrderStatus.REJECTED).distinct()
        )
        return {reason for (reason,) in rows}


def test_a_flash_sale_sells_exactly_the_stock_and_nothing_more(
    stack: LocalStack, engine: Engine
) -> None:
    seed_products(engine, STOCK)
    for _ in range(2):
        stack.start_worker(concurrency=2)
    orders = sale_orders()
    assert len(orders) > 2500
    with producer(stack.env["CELERY_BROKER_URL"]) as client:
        ids = enqueue(client, orders)
    wait_until_decided(engine, ids, timeout_s=240)
    report = check_invariants(engine, ids)
    # More one-unit orders than units on every SKU: the sale sells out completely.
    assert report.units_sold == STOCK
    assert stock(engine) == dict.fromkeys(STOCK, 0)
    assert set(report.by_status) == {"confirmed", "rejected"}
    assert rejection_reasons(engine) == {"insufficient_stock"}


SMALL_BUDGET = {
    "ORDER_MAX_RETRIES": "2",
    "ORDER_RETRY_BASE_S": "0.05",
    "ORDER_RETRY_MAX_S": "0.1",
    "REDLOCK_WAIT_ATTEMPTS": "2",
    "REDLOCK_WAIT_BASE_MS": "1",
    "REDLOCK_WAIT_MAX_MS": "5",
}


def test_an_order_behind_a_foreign_lock_fails_after_its_retry_budget(
    stack: LocalStack, engine: Engine
) -> None:
    token = f"foreign-{uuid.uuid4().hex}"
    hold_lock_elsewhere(stack.lock_nodes, "A", token)
    with open_shop(stack, engine, {"A": 5, "B": 5}, worker_env=SMALL_BUDGET) as shop:
        blocked, free = payload({"A": 1}), payload({"B": 1})
        shop.place(blocked, free)
        shop.wait_drained()
    row = order_row(engine, blocked["order_id"])
    assert row is not None
    # One delivery and two retries, then a visible failure.
    assert (row.status, row.reason, row.attempts) == ("failed", "lock_unavailable", 3)
    assert status(engine, free["order_id"]) == "confirmed"
    assert (stock(engine), movements(engine, blocked["order_id"])) == ({"A": 5, "B": 4}, [])
    assert lock_values(stack.lock_nodes, "A") == [token.encode()] * 3
