"""Deciding pending orders under a lock, in Python: the SQLite store's settlement.

All-or-nothing per order, FIFO, in batches. Whoever holds the lock over a set of
SKUs settles *every* pending order whose cart lies within that set, oldest
first, in one transaction (flat combining). On a hot SKU the lock holder
therefore decides the orders of the tasks waiting behind it, and those find
their order already decided instead of queueing for the lock one by one.

PostgreSQL runs the same rules as ``flashsale_settle`` (tasks/sql/settle.sql);
the store contract tests hold both to the same behaviour.

The database is the correctness layer: every stock decrement is a guarded
``UPDATE ... WHERE stock >= :total AND (fence < :fence OR (fence = :fence AND
fence_token = :token))``. The stock guard (and ``CHECK (stock >= 0)``) makes
oversell impossible whatever the lock does; the fence guard makes a holder whose
lease silently expired (a long pause, a clock jump) fail instead of writing
after a newer holder, and refuses a different lease that carries an equal fence.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, case, insert, literal_column, or_, select, update
from sqlalchemy.orm import Session

from tasks.errors import StaleFence
from tasks.models import ORDER_ITEMS, ORDERS, PRODUCTS, STOCK_MOVEMENTS, OrderStatus
from tasks.orders import Decision, age_s

#: Orders settled per transaction; bounds the transaction and the lease time it needs.
BATCH_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Fencing:
    """The lease a settlement writes under: its fence and a digest of its token."""

    fence: int
    token_digest: str


@dataclass(frozen=True, slots=True)
class _Cart:
    lines: list[tuple[str, int]]
    created_at: datetime | None


def settle(
    session: Session,
    *,
    skus: Sequence[str],
    fencing: Fencing | None,
    before_commit: Callable[[], None] = lambda: None,
    own_order_id: uuid.UUID | None = None,
    own_lock_wait_ms: float | None = None,
    limit: int = BATCH_LIMIT,
) -> list[Decision]:
    """Decide up to ``limit`` pending orders whose every line is one of ``skus``.

    :param session: a session inside ``sessions.begin()``; the caller commits.
    :param skus: the SKUs whose lock the caller holds.
    :param fencing: the lease's fence and token digest, or None without a lock.
    :param before_commit: called after the writes, e.g. a budget check; raising aborts.
    :param own_order_id: the calling task's order, whose lock wait is stored.
    :param own_lock_wait_ms: how long that order waited for its lock, in ms.
    :raises StaleFence: a newer (or another equal-fenced) lease wrote these SKUs.
    """
    carts = _pending_carts(session, skus, limit)
    if not carts:
        return []
    stock = _lock_products(session, skus, fencing)
    outcomes: dict[uuid.UUID, tuple[OrderStatus, str | None]] = {}
    totals: dict[str, int] = defaultdict(int)
    for order_id, cart in carts.items():
        outcomes[order_id] = _decide(cart.lines, stock, totals)
    _write_stock(session, totals, fencing)
    _write_movements(session, outcomes, carts, fencing)
    now = _write_orders(session, outcomes, own_order_id, own_lock_wait_ms)
    before_commit()
    return [
        Decision(order_id, status, reason, age_s(carts[order_id].created_at, now))
        for order_id, (status, reason) in outcomes.items()
    ]


def _pending_carts(session: Session, skus: Sequence[str], limit: int) -> dict[uuid.UUID, _Cart]:
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
        select(picked.c.id, picked.c.created_at, ORDER_ITEMS.c.sku, ORDER_ITEMS.c.quantity)
        .join(ORDER_ITEMS, ORDER_ITEMS.c.order_id == picked.c.id)
        .order_by(picked.c.created_at, picked.c.seq)
    )
    carts: dict[uuid.UUID, _Cart] = {}
    for order_id, created_at, sku, quantity in rows:
        carts.setdefault(order_id, _Cart([], created_at)).lines.append((sku, quantity))
    return carts


def _lock_products(
    session: Session, skus: Sequence[str], fencing: Fencing | None
) -> dict[str, int]:
    """Return sku -> stock for the known SKUs, row-locked in a fixed order."""
    rows = session.execute(
        select(PRODUCTS.c.sku, PRODUCTS.c.stock, PRODUCTS.c.fence, PRODUCTS.c.fence_token)
        .where(PRODUCTS.c.sku.in_(skus))
        .order_by(PRODUCTS.c.sku)
        .with_for_update()
    ).all()
    for sku, _, row_fence, row_token in rows:
        if fencing is not None and (
            row_fence > fencing.fence
            or (row_fence == fencing.fence and row_token != fencing.token_digest)
        ):
            raise StaleFence(sku, fencing.fence)
    return {sku: stock for sku, stock, _, _ in rows}


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


def _write_stock(session: Session, totals: dict[str, int], fencing: Fencing | None) -> None:
    for sku, total in sorted(totals.items()):
        guard = [PRODUCTS.c.sku == sku, PRODUCTS.c.stock >= total]
        values: dict[str, object] = {"stock": PRODUCTS.c.stock - total}
        if fencing is not None:
            guard.append(
                or_(
                    PRODUCTS.c.fence < fencing.fence,
                    and_(
                        PRODUCTS.c.fence == fencing.fence,
                        PRODUCTS.c.fence_token == fencing.token_digest,
                    ),
                )
            )
            values["fence"] = fencing.fence
            values["fence_token"] = fencing.token_digest
        result = session.execute(update(PRODUCTS).where(*guard).values(values))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            # Only a newer fence can make the guard fail: the rows are locked and
            # the totals were computed from them. Abort the whole settlement.
            raise StaleFence(sku, None if fencing is None else fencing.fence)


def _write_movements(
    session: Session,
    outcomes: dict[uuid.UUID, tuple[OrderStatus, str | None]],
    carts: dict[uuid.UUID, _Cart],
    fencing: Fencing | None,
) -> None:
    fence = None if fencing is None else fencing.fence
    movements = [
        {"order_id": order_id, "sku": sku, "delta": -quantity, "fence": fence}
        for order_id, (status, _) in outcomes.items()
        if status is OrderStatus.CONFIRMED
        for sku, quantity in carts[order_id].lines
    ]
    if movements:
        session.execute(insert(STOCK_MOVEMENTS), movements)


def _write_orders(
    session: Session,
    outcomes: dict[uuid.UUID, tuple[OrderStatus, str | None]],
    own_order_id: uuid.UUID | None,
    own_lock_wait_ms: float | None,
) -> datetime:
    """Store every outcome; return the decision time written."""
    groups: dict[tuple[OrderStatus, str | None], list[uuid.UUID]] = defaultdict(list)
    for order_id, outcome in outcomes.items():
        groups[outcome].append(order_id)
    now = datetime.now(UTC)
    wait = (
        case((ORDERS.c.id == own_order_id, own_lock_wait_ms), else_=None)
        if own_order_id is not None and own_lock_wait_ms is not None
        else None
    )
    for (status, reason), ids in groups.items():
        session.execute(
            update(ORDERS)
            .where(ORDERS.c.id.in_(ids), ORDERS.c.status == OrderStatus.PENDING)
            .values(status=status, reason=reason, decided_at=now, lock_wait_ms=wait)
        )
    return now
