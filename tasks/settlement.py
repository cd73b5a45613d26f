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

from sqlalchemy import (
    Uuid,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tasks.errors import StaleFence
from tasks.models import ORDER_ITEMS, ORDERS, PRODUCTS, STOCK_MOVEMENTS, OrderStatus
from tasks.orders import is_postgresql

#: Orders settled per transaction; bounds the transaction and the lease time it needs.
BATCH_LIMIT = 500
#: The SQLSTATE flashsale_settle raises when a newer fence wrote the stock.
STALE_FENCE_SQLSTATE = "FS001"
SETTLE_FUNCTION = text(
    "SELECT order_id, status, reason FROM flashsale_settle(:skus, :fence, :limit, :own, :wait)"
).bindparams(bindparam("own", type_=Uuid))


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
    if is_postgresql(session):
        settlement = _settle_in_postgresql(session, skus, fence, own_order, limit)
        before_commit()
        return settlement
    carts = _pending_carts(session, skus, limit)
    if not carts:
        return Settlement()
    stock = _lock_products(session, skus, fence)
    settlement = Settlement()
    totals: dict[str, int] = defaultdict(int)
    for order_id, cart in carts.items():
        settlement.decided[order_id] = _decide(cart, stock, totals)
    _write_stock(session, totals, fence)
    _write_movements(session, settlement, carts, fence)
    _write_orders(session, settlement, own_order)
    before_commit()
    return settlement


def _settle_in_postgresql(
    session: Session,
    skus: Sequence[str],
    fence: int | None,
    own_order: tuple[uuid.UUID, float] | None,
    limit: int,
) -> Settlement:
    """Run the same algorithm as a PostgreSQL function (migration 0002): one round trip."""
    params = {
        "skus": list(skus),
        "fence": fence,
        "limit": limit,
        "own": own_order[0] if own_order else None,
        "wait": own_order[1] if own_order else None,
    }
    try:
        rows = session.execute(SETTLE_FUNCTION, params).all()
    except DBAPIError as error:
        if getattr(error.orig, "pgcode", None) == STALE_FENCE_SQLSTATE:
            raise StaleFence(",".join(skus), fence) from None
        raise
    return Settlement(
        {order_id: (OrderStatus(status), reason) for order_id, status, reason in rows}
    )


def _pending_carts(
    session: Session, skus: Sequence[str], limit: int
) -> dict[uuid.UUID, list[tuple[str, int]]]:
    """Row-lock the oldest pending orders within ``skus`` and return their carts, in order.

    Orders row-locked by another transaction are skipped, not waited for.
    """
    touching = select(ORDER_ITEMS.c.order_id).where(ORDER_ITEMS.c.sku.in_(skus))
    outside = (
        select(ORDER_ITEMS.c.order_id)
        .where(ORDER_ITEMS.c.order_id == ORDERS.c.id, ORDER_ITEMS.c.sku.not_in(skus))
        .exists()
    )
    picked = (
        select(ORDERS.c.id, ORDERS.c.created_at, literal_column("orders.rowid").label("seq"))
        .where(ORDERS.c.status == OrderStatus.PENDING, ORDERS.c.id.in_(touching), ~outside)
        # created_at has whole seconds on SQLite (the only user of this path);
        # rowid breaks ties in insertion order, so FIFO holds within a second.
        .order_by(ORDERS.c.created_at, literal_column("orders.rowid"))
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    rows = session.execute(
        select(picked.c.id, ORDER_ITEMS.c.sku, ORDER_ITEMS.c.quantity)
        .join(ORDER_ITEMS, ORDER_ITEMS.c.order_id == picked.c.id)
        .order_by(picked.c.created_at, picked.c.seq)
    )
    carts: dict[uuid.UUID, list[tuple[str, int]]] = {}
    for order_id, sku, quantity in rows:
        carts.setdefault(order_id, []).append((sku, quantity))
    return carts


def _lock_products(session: Session, skus: Sequence[str], fence: int | None) -> dict[str, int]:
    """Return sku -> stock for the known SKUs, row-locked in a fixed order."""
    rows = session.execute(
        select(PRODUCTS.c.sku, PRODUCTS.c.stock, PRODUCTS.c.fence)
        .where(PRODUCTS.c.sku.in_(skus))
        .order_by(PRODUCTS.c.sku)
        .with_for_update()
    ).all()
    for sku, _, row_fence in rows:
        if fence is not None and row_fence > fence:
            raise StaleFence(sku, fence)
    return {sku: stock for sku, stock, _ in rows}


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
        guard = [PRODUCTS.c.sku == sku, PRODUCTS.c.stock >= total]
        values: dict[str, object] = {"stock": PRODUCTS.c.stock - total}
        if fence is not None:
            guard.append(PRODUCTS.c.fence <= fence)
            values["fence"] = fence
        result = session.execute(update(PRODUCTS).where(*guard).values(values))
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
        session.execute(insert(STOCK_MOVEMENTS), movements)


def _write_orders(
    session: Session, settlement: Settlement, own_order: tuple[uuid.UUID, float] | None
) -> None:
    groups: dict[tuple[OrderStatus, str | None], list[uuid.UUID]] = defaultdict(list)
    for order_id, outcome in settlement.decided.items():
        groups[outcome].append(order_id)
    now = datetime.now(UTC)
    wait = case((ORDERS.c.id == own_order[0], own_order[1]), else_=None) if own_order else None
    for (status, reason), ids in groups.items():
        session.execute(
            update(ORDERS)
            .where(ORDERS.c.id.in_(ids), ORDERS.c.status == OrderStatus.PENDING)
            .values(status=status, reason=reason, decided_at=now, lock_wait_ms=wait)
        )


def highest_fence(session: Session, skus: Sequence[str]) -> int:
    """Return the highest fence that wrote the stock of any of ``skus`` (0 if none)."""
    value = session.scalar(select(func.max(PRODUCTS.c.fence)).where(PRODUCTS.c.sku.in_(skus)))
    return int(value or 0)
