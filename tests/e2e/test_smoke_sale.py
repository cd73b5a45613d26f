"""The smallest whole-system check: a hot-SKU sale through two real workers."""

from __future__ import annotations

from sqlalchemy import Engine

from tests.sale import (
    check_invariants,
    enqueue,
    producer,
    random_carts,
    seed_products,
    wait_until_decided,
)
from worker.stack import LocalStack


def test_hot_sku_sale_sells_exactly_the_stock(stack: LocalStack, engine: Engine) -> None:
    seed_products(engine, {"HOT": 40, "B": 25})
    stack.start_worker(concurrency=2)
    payloads = random_carts(400, ["HOT", "B"], max_lines=2, max_quantity=2)
    ids = enqueue(producer(stack.env["CELERY_BROKER_URL"]), payloads)
    wait_until_decided(engine, ids, timeout_s=120)
    report = check_invariants(engine, ids)
    # 400 orders of 1-2 units against 65 units: both SKUs sell out to the last
    # unit that a 1-2 unit order can still take.
    assert 39 <= report.units_sold["HOT"] <= 40
    assert 24 <= report.units_sold["B"] <= 25
    assert report.by_status["confirmed"] + report.by_status["rejected"] == 400
