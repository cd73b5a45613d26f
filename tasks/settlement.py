"""Deciding pending orders under a lock: all-or-nothing per order, FIFO, in batches.

Whoever holds the lock over a set of SKUs settles *every* pending order whose
cart lies within that set, oldest first, in one transaction (flat combining).
On a hot SKU the lock holder therefore decides the orders of the tasks waiting
behind it, and those find their order already decided instead of queueing for
the lock one by one.

The database is the correctness layer: every stock decrement is a guarded
``UPDATE ... WHERE stock >= :total AND fence <= :fence``. The stock guard (and
``CHECK (stock >= 0)``) makes oversell impossible whatever the lock does; the
fence guard makes a holder whose lease silently expired (a long pause, a clock
jump) fail instead of writing after a newer holder.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import case, insert, select, update
from sqlalchemy.orm import Session

from tasks.errors import StaleFence
from tasks.models import Order, OrderItem, OrderStatus, Product, StockMovement

#: Orders settled per transaction; bounds the transaction and the lease time it needs.
BATCH_LIMIT = 500


@dataclass(slots=True)
class Settlement:
    """What one settle call decided: order id -> (status, reason)."""

    decided: dict[uuid.UUID, tuple[OrderStatus, str | None]] = field(default_factory=dict)


def settle(
    session: Session,
    *,
    skus: Sequence[str],
    fence: int | None,
    before_commit: Callable[[], None] = lambda: None,
    own_order: tuple[uuid.UUID, float] | None = None,
    limit: int = BATCH_LIMIT,
) -> Settlement:
    """Decide up to ``limit`` pending orders whose every line is one of ``skus``.

    :param session: a session inside ``sessions.begin()``; the caller commits.
    :param skus: the SKUs whose lock the caller holds.
    :param fence: the lease's fencing token, or None when running without a lock.
    :param before_commit: called after the writes, e.g. ``lease.check``; raising aborts.
    :param own_order: (order id, lock wait in ms) of the calling task, to record the wait.
    :raises StaleFence: a newer lease wrote these SKUs; nothing was changed.
    """
    order_ids = _pending_orders(session, skus, limit)
    if not order_ids:
        return Settlement()
    products = _lock_products(session, skus, fence)
    carts = _carts(session, order_ids)
    settlement = Settlement()
    totals: dict[str, int] = defaultdict(int)
    for order_id in order_ids:
        settlement.decided[order_id] = _decide(carts[order_id], products, totals)
    _write_stock(session, totals, fence)
    _write_movements(session, settlement, carts, fence)
    _write_orders(session, settlement, own_order)
    before_commit()
    return settlement


def _pending_orders(session: Session, skus: Sequence[str], limit: int) -> list[uuid.UUID]:
    touching = select(OrderItem.order_id).where(OrderItem.sku.in_(skus))
    outside = (
        select(OrderItem.order_id)
        .where(OrderItem.order_id == Order.id, OrderItem.sku.not_in(skus))
        .exists()
    )
    statement = (
        select(Order.id)
        .where(Order.status == OrderStatus.PENDING, Order.id.in_(touching), ~outside)
        .order_by(Order.created_at, Order.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Order)
    )
    return list(session.scalars(statement))


def _lock_products(session: Session, skus: Sequence[str], fence: int | None) -> dict[str, int]:
    """Return sku -> stock for the known SKUs, row-locked in a fixed order."""
    rows = session.execute(
        select(Product.sku, Product.stock, Product.fence)
        .where(Product.sku.in_(skus))
        .order_by(Product.sku)
        .with_for_update()
    ).all()
    for row in rows:
        if fence is not None and row.fence > fence:
            raise StaleFence(row.sku, fence)
    return {row.sku: row.stock for row in rows}


def _carts(session: Session, order_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, int]]]:
    carts: dict[uuid.UUID, list[tuple[str, int]]] = defaultdict(list)
    rows = session.execute(
        select(OrderItem.order_id, OrderItem.sku, OrderItem.quantity).where(
            OrderItem.order_id.in_(order_ids)
        )
    )
    for order_id, sku, quantity in rows:
        carts[order_id].append((sku, quantity))
    return carts


def _decide(
    cart: list[tuple[str, int]], stock: dict[str, int], totals: dict[str, int]
) -> tuple[OrderStatus, str | None]:
    """Decide one order against the stock left; take its units from ``stock`` if confirmed."""
    if any(sku not in stock for sku, _ in cart):
        return OrderStatus.REJECTED, "unknown_sku"
    if any(stock[sku] < quantity for sku, quantity in cart):
        return OrderStatus.REJECTED, "insufficient_stock"
    for sku, quantity in cart:
        stock[sku] -= quantity
        totals[sku] += quantity
    return OrderStatus.CONFIRMED, None


def _write_stock(session: Session, totals: dict[str, int], fence: int | None) -> None:
    for sku, total in sorted(totals.items()):
        guard = [Product.sku == sku, Product.stock >= total]
        values: dict[str, object] = {"stock": Product.stock - total}
        if fence is not None:
            guard.append(Product.fence <= fence)
            values["fence"] = fence
        result = session.execute(update(Product).where(*guard).values(values))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            # Only a newer fence can make the guard fail: the rows are locked and
            # the totals were computed from them. Abort the whole settlement.
            raise StaleFence(sku, fence)


def _write_movements(
    session: Session,
    settlement: Settlement,
    carts: dict[uuid.UUID, list[tuple[str, int]]],
    fence: int | None,
) -> None:
    movements = [
        {"order_id": order_id, "sku": sku, "delta": -quantity, "fence": fence}
        for order_id, (status, _) in settlement.decided.items()
        if status is OrderStatus.CONFIRMED
        for sku, quantity in carts[order_id]
    ]
    if movements:
        session.execute(insert(StockMovement), movements)


def _write_orders(
    session: Session, settlement: Settlement, own_order: tuple[uuid.UUID, float] | None
) -> None:
    groups: dict[tuple[OrderStatus, str | None], list[uuid.UUID]] = defaultdict(list)
    for order_id, outcome in settlement.decided.items():
        groups[outcome].append(order_id)
    now = datetime.now(UTC)
    wait = case((Order.id == own_order[0], own_order[1]), else_=None) if own_order else None
    for (status, reason), ids in groups.items():
        session.execute(
            update(Order)
            .where(Order.id.in_(ids), Order.status == OrderStatus.PENDING)
            .values(status=status, reason=reason, decided_at=now, lock_wait_ms=wait)
        )
