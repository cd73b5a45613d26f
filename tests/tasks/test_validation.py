"""`tasks.validation`: every kind of untrusted payload is parsed or refused with its reason."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tasks.errors import InvalidOrder
from tasks.validation import (
    MAX_CUSTOMER_LENGTH,
    MAX_LINES,
    MAX_QUANTITY,
    MAX_SKU_LENGTH,
    Line,
    parse_order,
)
from tests.domain import payload

ORDER_ID = "0b9f1c9e-4a52-4c8e-9d0e-5f3b2a1c7d64"


def with_items(*items: object) -> dict[str, Any]:
    """A payload whose ``items`` list is exactly ``items``."""
    return {**payload(order_id=ORDER_ID), "items": list(items)}


def line(sku: object = "A", quantity: object = 1) -> dict[str, object]:
    return {"sku": sku, "quantity": quantity}


def refusal(data: dict[str, Any]) -> InvalidOrder:
    with pytest.raises(InvalidOrder) as caught:
        parse_order(data)
    return caught.value


def test_a_valid_order_is_parsed_with_its_lines_sorted_by_sku() -> None:
    order = parse_order(payload({"B": 2, "A": 1}, customer="alice", order_id=ORDER_ID))
    assert order.order_id == uuid.UUID(ORDER_ID)
    assert order.customer_id == "alice"
    assert order.lines == (Line("A", 1), Line("B", 2))
    assert order.skus == ("A", "B")


def test_the_payload_hash_ignores_line_order_but_not_content() -> None:
    first = parse_order(payload({"A": 1, "B": 2}, order_id=ORDER_ID))
    reordered = parse_order(payload({"B": 2, "A": 1}, order_id=ORDER_ID))
    other_quantity = parse_order(payload({"A": 1, "B": 3}, order_id=ORDER_ID))
    other_customer = parse_order(payload({"A": 1, "B": 2}, customer="c2", order_id=ORDER_ID))
    assert first.payload_hash == reordered.payload_hash
    assert first.payload_hash != other_quantity.payload_hash
    assert first.payload_hash != other_customer.payload_hash


def test_limits_are_inclusive() -> None:
    skus = [f"S{i}" for i in range(MAX_LINES)]
    order = parse_order(
        {
            **payload(customer="c" * MAX_CUSTOMER_LENGTH, order_id=ORDER_ID),
            "items": [line(sku, MAX_QUANTITY) for sku in skus[:-1]]
            + [line("X" * MAX_SKU_LENGTH, 1)],
        }
    )
    assert len(order.lines) == MAX_LINES


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"customer_id": "c1", "items": [line()]}, "missing_field"),
        ({**payload(), "order_id": "not-a-uuid"}, "invalid_order_id"),
        ({**payload(), "order_id": 12345}, "invalid_order_id"),
        ({**payload(), "order_id": ""}, "invalid_order_id"),
    ],
    ids=["missing", "not-a-uuid", "not-a-string", "empty"],
)
def test_an_unreadable_order_id_is_refused_without_an_id(data: dict[str, Any], reason: str) -> None:
    error = refusal(data)
    assert (error.reason, error.order_id) == (reason, None)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"order_id": ORDER_ID, "items": [line()]}, "missing_field"),
        ({**payload(order_id=ORDER_ID), "customer_id": "   "}, "invalid_customer_id"),
        ({**payload(order_id=ORDER_ID), "customer_id": 7}, "invalid_customer_id"),
        ({**payload(order_id=ORDER_ID), "customer_id": "a\u0000b"}, "invalid_customer_id"),
        ({**payload(order_id=ORDER_ID), "customer_id": "x\ud800"}, "invalid_customer_id"),
        (
            {**payload(order_id=ORDER_ID), "customer_id": "c" * (MAX_CUSTOMER_LENGTH + 1)},
            "invalid_customer_id",
        ),
        ({"order_id": ORDER_ID, "customer_id": "c1"}, "missing_field"),
        ({**payload(order_id=ORDER_ID), "items": {"sku": "A", "quantity": 1}}, "invalid_items"),
        ({**payload(order_id=ORDER_ID), "items": "A:1"}, "invalid_items"),
        (with_items(), "empty_cart"),
        (with_items(*[line(f"S{i}") for i in range(MAX_LINES + 1)]), "cart_too_large"),
        (with_items(["A", 1]), "invalid_items"),
        (with_items({"sku": "A"}), "invalid_items"),
        (with_items({**line(), "price": 1}), "invalid_items"),
        (with_items(line(sku="")), "invalid_sku"),
        (with_items(line(sku=5)), "invalid_sku"),
        (with_items(line(sku="X" * (MAX_SKU_LENGTH + 1))), "invalid_sku"),
        (with_items(line(sku="A\x00")), "invalid_sku"),
        (with_items(line(quantity="2")), "invalid_quantity"),
        (with_items(line(quantity=True)), "invalid_quantity"),
        (with_items(line(quantity=1.5)), "invalid_quantity"),
        (with_items(line(quantity=2.0)), "invalid_quantity"),
        (with_items(line(quantity=None)), "invalid_quantity"),
        (with_items(line(quantity=0)), "invalid_quantity"),
        (with_items(line(quantity=-3)), "invalid_quantity"),
        (with_items(line(quantity=MAX_QUANTITY + 1)), "quantity_too_large"),
        (with_items(line(quantity=10**30)), "quantity_too_large"),
        (with_items(line("A", 1), line("A", 2)), "duplicate_sku"),
        ({**payload(order_id=ORDER_ID), "coupon": "FREE"}, "unexpected_field"),
    ],
    ids=[
        "customer-missing",
        "customer-blank",
        "customer-not-a-string",
        "customer-nul",
        "customer-lone-surrogate",
        "customer-too-long",
        "items-missing",
        "items-a-dict",
        "items-a-string",
        "empty-cart",
        "cart-too-large",
        "line-not-a-dict",
        "line-without-quantity",
        "line-extra-key",
        "sku-empty",
        "sku-not-a-string",
        "sku-too-long",
        "sku-not-printable",
        "quantity-string",
        "quantity-true",
        "quantity-fraction",
        "quantity-float",
        "quantity-null",
        "quantity-zero",
        "quantity-negative",
        "quantity-above-max",
        "quantity-absurd",
        "duplicate-sku",
        "extra-field",
    ],
)
def test_an_invalid_payload_is_refused_with_its_reason_and_order_id(
    data: dict[str, Any], reason: str
) -> None:
    error = refusal(data)
    assert (error.reason, error.order_id) == (reason, uuid.UUID(ORDER_ID))
