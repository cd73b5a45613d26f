"""Idempotency through real workers: an order id moves stock once, however often it arrives.

Duplicates in the queue and a redelivery after the decision are counted, not
re-applied; the same id with another payload is refused and the first order stands.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.domain import cart, movements, order_row, payload, stock
from tests.e2e.shop import Shop, open_shop
from tests.sale import check_invariants
from worker.demo.stack import LocalStack


@pytest.fixture
def shop(stack: LocalStack, engine: Engine) -> Iterator[Shop]:
    with open_shop(stack, engine, {"A": 10, "B": 10}) as running:
        yield running


def test_duplicates_in_the_queue_move_stock_once(shop: Shop) -> None:
    single, multi = payload({"A": 2}), payload({"A": 1, "B": 3})
    shop.send(*[single] * 5, *[multi] * 4)
    shop.wait_for_attempts(single["order_id"], 5)
    shop.wait_for_attempts(multi["order_id"], 4)
    assert movements(shop.engine, single["order_id"]) == [("A", -2)]
    assert movements(shop.engine, multi["order_id"]) == [("A", -1), ("B", -3)]
    assert stock(shop.engine) == {"A": 7, "B": 7}
    report = check_invariants(shop.engine, [single["order_id"], multi["order_id"]])
    assert report.by_status == {"confirmed": 2}


def test_an_order_sent_again_after_its_decision_keeps_its_outcome(shop: Shop) -> None:
    order = payload({"A": 3})
    shop.place(order)
    first = order_row(shop.engine, order["order_id"])
    shop.send(order)
    shop.wait_for_attempts(order["order_id"], 2)
    again = order_row(shop.engine, order["order_id"])
    assert first is not None and again is not None
    assert (first.status, again.status, again.attempts) == ("confirmed", "confirmed", 2)
    assert movements(shop.engine, order["order_id"]) == [("A", -3)]
    assert stock(shop.engine)["A"] == 7


def test_a_rejected_order_sent_again_stays_rejected_after_a_restock(shop: Shop) -> None:
    order = payload({"A": 11})
    shop.place(order)
    shop.set_stock("A", 50)
    shop.send(order)
    shop.wait_for_attempts(order["order_id"], 2)
    row = order_row(shop.engine, order["order_id"])
    assert row is not None
    assert (row.status, row.reason) == ("rejected", "insufficient_stock")
    assert (stock(shop.engine)["A"], movements(shop.engine)) == (50, [])


def test_the_same_id_with_another_payload_is_refused_and_the_first_stands(shop: Shop) -> None:
    firsts = [payload({"A": 1}, customer="c1") for _ in range(3)]
    shop.place(*firsts)
    conflicting = [
        payload({"A": 5}, customer="c1", order_id=firsts[0]["order_id"]),
        payload({"A": 1, "B": 1}, customer="c1", order_id=firsts[1]["order_id"]),
        payload({"A": 1}, customer="mallory", order_id=firsts[2]["order_id"]),
    ]
    shop.send(*conflicting)
    shop.wait_drained()
    log = shop.worker_log()
    for first in firsts:
        assert f"Order {first['order_id']!r} refused" in log
        row = order_row(shop.engine, first["order_id"])
        assert row is not None
        assert (row.status, row.customer_id, row.attempts) == ("confirmed", "c1", 1)
        assert cart(shop.engine, first["order_id"]) == {"A": 1}
    assert stock(shop.engine) == {"A": 7, "B": 10}
    check_invariants(shop.engine, [first["order_id"] for first in firsts])
