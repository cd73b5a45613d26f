"""Turn an untrusted task payload into an `OrderRequest`, or say exactly why not.

Pure functions, no I/O: everything a web app (or an attacker) can put into a
message is checked here, before any database or lock work is done.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from tasks.errors import InvalidOrder

#: The public, stable name of the order task (what ``send_task`` uses).
TASK_NAME = "tasks.place_order"
MAX_LINES = 50
MAX_QUANTITY = 1000
MAX_SKU_LENGTH = 64
MAX_CUSTOMER_LENGTH = 128
FIELDS = frozenset({"order_id", "customer_id", "items"})


@dataclass(frozen=True, slots=True)
class Line:
    """One cart line: ``quantity`` units of ``sku``."""

    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A validated order; ``lines`` are sorted by SKU, ``payload_hash`` identifies its content."""

    order_id: uuid.UUID
    customer_id: str
    lines: tuple[Line, ...]
    payload_hash: str

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(line.sku for line in self.lines)


def parse_order(payload: dict[str, Any]) -> OrderRequest:
    """Validate the kwargs of ``tasks.place_order``.

    :param payload: the task's keyword arguments, as decoded from JSON.
    :raises InvalidOrder: with a stable reason, and the order id when it was readable.
    """
    order_id = parse_order_id(payload.get("order_id"))
    unexpected = sorted(str(key) for key in payload if key not in FIELDS)
    if unexpected:
        raise InvalidOrder("unexpected_field", f"unknown fields {unexpected}", order_id=order_id)
    customer_id = _parse_customer_id(payload.get("customer_id"), order_id)
    lines = _parse_items(payload.get("items"), order_id)
    return OrderRequest(
        order_id=order_id,
        customer_id=customer_id,
        lines=lines,
        payload_hash=content_hash(customer_id, lines),
    )


def _parse_customer_id(value: object, order_id: uuid.UUID) -> str:
    if value is None:
        raise InvalidOrder("missing_field", "customer_id is required", order_id=order_id)
    # Printable only: a NUL or a lone surrogate cannot be stored by the database.
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise InvalidOrder(
            "invalid_customer_id",
            "customer_id must be a non-empty printable string",
            order_id=order_id,
        )
    if len(value) > MAX_CUSTOMER_LENGTH:
        detail = f"customer_id longer than {MAX_CUSTOMER_LENGTH}"
        raise InvalidOrder("invalid_customer_id", detail, order_id=order_id)
    return value


def parse_order_id(value: object) -> uuid.UUID:
    """Return the order id as a UUID; raise `InvalidOrder` (without an id) otherwise."""
    if value is None:
        raise InvalidOrder("missing_field", "order_id is required")
    if not isinstance(value, str):
        raise InvalidOrder(
            "invalid_order_id", f"order_id must be a UUID string, got {type(value).__name__}"
        )
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidOrder("invalid_order_id", f"order_id is not a UUID: {value[:64]!r}") from None


def order_id_or_none(value: object) -> uuid.UUID | None:
    """Return ``value`` as an order id when it is one, else None (for rejections)."""
    try:
        return parse_order_id(value)
    except InvalidOrder:
        return None


def content_hash(customer_id: str, lines: tuple[Line, ...]) -> str:
    """Return a digest of what the order asks for, to tell a replay from a conflict."""
    canonical = json.dumps([customer_id, [[line.sku, line.quantity] for line in lines]])
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parse_items(items: object, order_id: uuid.UUID) -> tuple[Line, ...]:
    if items is None:
        raise InvalidOrder("missing_field", "items is required", order_id=order_id)
    if not isinstance(items, list):
        raise InvalidOrder(
            "invalid_items", "items must be a list of {sku, quantity}", order_id=order_id
        )
    if not items:
        raise InvalidOrder("empty_cart", "items is empty", order_id=order_id)
    if len(items) > MAX_LINES:
        raise InvalidOrder(
            "cart_too_large", f"{len(items)} lines, at most {MAX_LINES}", order_id=order_id
        )
    lines = [_parse_line(item, order_id) for item in items]
    skus = [line.sku for line in lines]
    if len(set(skus)) != len(skus):
        raise InvalidOrder("duplicate_sku", "a SKU appears on several lines", order_id=order_id)
    return tuple(sorted(lines, key=lambda line: line.sku))


def _parse_line(item: object, order_id: uuid.UUID) -> Line:
    if not isinstance(item, dict) or set(item) != {"sku", "quantity"}:
        raise InvalidOrder(
            "invalid_items", "each line must be exactly {sku, quantity}", order_id=order_id
        )
    sku, quantity = item["sku"], item["quantity"]
    if not isinstance(sku, str) or not sku or len(sku) > MAX_SKU_LENGTH or not sku.isprintable():
        raise InvalidOrder(
            "invalid_sku", f"sku must be 1-{MAX_SKU_LENGTH} printable characters", order_id=order_id
        )
    # bool is an int subclass in Python; JSON true is not a quantity.
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise InvalidOrder(
            "invalid_quantity",
            f"quantity must be a positive integer, got {quantity!r}"[:120],
            order_id=order_id,
        )
    if quantity > MAX_QUANTITY:
        raise InvalidOrder(
            "quantity_too_large", f"quantity {quantity} exceeds {MAX_QUANTITY}", order_id=order_id
        )
    return Line(sku=sku, quantity=quantity)
