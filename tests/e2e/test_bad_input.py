"""Bad input through real workers: each kind is rejected once, stored, and the worker goes on.

A payload with a readable order id is stored ``rejected`` with its reason; a
message without one leaves no row. Every message is consumed without the task
raising, and a good order sent after all of them is confirmed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from tasks.validation import MAX_LINES, MAX_QUANTITY
from tests.domain import movements, order_count, order_row, payload, status, stock
from tests.e2e.shop import Shop, open_shop
from worker.demo.stack import LocalStack

STOCK = {"A": 100, "B": 100}


@pytest.fixture
def shop(stack: LocalStack, engine: Engine) -> Iterator[Shop]:
    with open_shop(stack, engine, STOCK) as running:
        yield running


def with_fields(**fields: Any) -> dict[str, Any]:
    """A valid payload with ``fields`` replaced (a None value removes the field)."""
    data = {**payload({"A": 1}), **fields}
    return {key: value for key, value in data.items() if value is not None}


def with_lines(*lines: dict[str, Any]) -> dict[str, Any]:
    return with_fields(items=list(lines))


def line(sku: Any = "A", quantity: Any = 1) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity}


#: (payload, stored reason) of every bad order that carries a valid order id.
REJECTED = {
    "missing customer_id": (with_fields(customer_id=None), "missing_field"),
    "missing items": (with_fields(items=None), "missing_field"),
    "blank customer_id": (with_fields(customer_id="  "), "invalid_customer_id"),
    "customer_id a number": (with_fields(customer_id=42), "invalid_customer_id"),
    "items not a list": (with_fields(items={"sku": "A", "quantity": 1}), "invalid_items"),
    "line not an object": (with_lines(["A", 1]), "invalid_items"),  # type: ignore[arg-type]
    "quantity as string": (with_lines(line(quantity="1")), "invalid_quantity"),
    "quantity true": (with_lines(line(quantity=True)), "invalid_quantity"),
    "quantity 1.5": (with_lines(line(quantity=1.5)), "invalid_quantity"),
    "quantity 0": (with_lines(line(quantity=0)), "invalid_quantity"),
    "quantity negative": (with_lines(line(quantity=-5)), "invalid_quantity"),
    "quantity absurd": (with_lines(line(quantity=10**12)), "quantity_too_large"),
    "quantity above max": (with_lines(line(quantity=MAX_QUANTITY + 1)), "quantity_too_large"),
    "sku empty": (with_lines(line(sku="")), "invalid_sku"),
    "duplicate skus": (with_lines(line("A"), line("B"), line("A")), "duplicate_sku"),
    "empty cart": (with_lines(), "empty_cart"),
    "oversize cart": (
        with_lines(*[line(f"S{i}") for i in range(MAX_LINES + 1)]),
        "cart_too_large",
    ),
    "unexpected field": (with_fields(coupon="FREE"), "unexpected_field"),
    "unknown sku": (payload({"A": 1, "NOPE": 1}), "unknown_sku"),
}


def assert_the_worker_went_on(shop: Shop) -> None:
    """A good order sent last is confirmed, every message was consumed, no task raised."""
    good = payload({"B": 2})
    shop.place(good)
    shop.wait_drained()
    assert status(shop.engine, good["order_id"]) == "confirmed"
    assert "raised unexpected" not in shop.worker_log()


def test_each_bad_order_is_stored_rejected_with_its_reason(shop: Shop) -> None:
    shop.send(*(data for data, _ in REJECTED.values()))
    assert_the_worker_went_on(shop)
    stored = {}
    for name, (data, _) in REJECTED.items():
        row = order_row(shop.engine, data["order_id"])
        stored[name] = (row.status, row.reason) if row else ("missing", None)
    assert stored == {name: ("rejected", reason) for name, (_, reason) in REJECTED.items()}
    assert stock(shop.engine) == {"A": 100, "B": 98}
    assert len(movements(shop.engine)) == 1


def test_messages_without_a_usable_order_id_are_consumed_and_leave_no_row(shop: Shop) -> None:
    shop.send(
        with_fields(order_id="not-a-uuid"),
        with_fields(order_id=12345),
        with_fields(order_id=None),
        with_fields(order_id=[str(uuid.uuid4())]),
    )
    assert_the_worker_went_on(shop)
    assert order_count(shop.engine) == 1
    assert stock(shop.engine) == {"A": 100, "B": 98}


def test_positional_arguments_are_consumed_and_move_nothing(shop: Shop) -> None:
    shop.send_raw(args=[str(uuid.uuid4()), "c1", [line()]])
    assert_the_worker_went_on(shop)
    assert "positional_args" in shop.worker_log()
    assert stock(shop.engine) == {"A": 100, "B": 98}


def test_positional_arguments_with_a_readable_order_id_store_the_rejection(shop: Shop) -> None:
    order_id = str(uuid.uuid4())
    shop.send_raw(args=["extra"], kwargs=with_fields(order_id=order_id))
    assert_the_worker_went_on(shop)
    assert status(shop.engine, order_id) == "rejected"
    row = order_row(shop.engine, order_id)
    assert row is not None and row.reason == "positional_args"
