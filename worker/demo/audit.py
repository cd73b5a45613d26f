"""Read a sale back from the database: order counts, oversold units, the ledger, lock waits.

`check_ledger` is the one check of the stock ledger's invariants, used by the
demo's summary, the tests (``tests.sale``) and the chaos report
(``tests.chaos.figures``). A sale is scoped by its customers' id prefix and its
SKUs, so the audit is exact on a database that holds other orders and products
too. Nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select, true

from tasks.models import Order, OrderItem, OrderStatus, Product, StockMovement


@dataclass(frozen=True)
class SaleScope:
    """Which rows belong to one sale.

    :param customer_prefix: every order of the sale has a customer id starting with it.
    :param skus: the products created for the sale.
    """

    customer_prefix: str
    skus: tuple[str, ...]


@dataclass(frozen=True)
class Audit:
    """What the database says about a sale.

    :param counts: orders per status (``pending``, ``confirmed``...), recorded orders only.
    :param initial_units: units on sale over all SKUs.
    :param sold_units: units that left stock (initial - current) over all SKUs.
    :param oversold_units: confirmed units beyond a SKU's initial stock, summed.
    :param ledger_problems: every disagreement of stock, movements and confirmed lines.
    :param lock_waits_ms: lock wait of each order decided by its own task (others are null).
    :param republished: orders the intake relay published (``orders.republications``).
    """

    counts: dict[str, int]
    initial_units: int
    sold_units: int
    oversold_units: int
    ledger_problems: list[str]
    lock_waits_ms: list[float]
    republished: int = 0


@dataclass(frozen=True)
class LedgerCheck:
    """How the stock ledger agrees with the orders.

    Per SKU: stock never below zero, initial - stock == confirmed units ==
    -sum(movements), one movement per confirmed line; per order: movements only
    for confirmed orders, exactly one per line of the order.

    :param problems: every disagreement, one sentence each (empty when sound).
    :param oversold_units: confirmed units beyond a SKU's initial stock, plus stock below zero.
    :param duplicate_movements: movements beyond one per line of a confirmed order (or of
        an order that is not confirmed), plus units that left stock without a movement.
    """

    problems: list[str]
    oversold_units: int
    duplicate_movements: int


def check_ledger(engine: Engine, skus: Sequence[str] | None = None) -> LedgerCheck:
    """Check the ledger invariants of ``skus`` (every product when None)."""
    with engine.connect() as connection:
        return _check_ledger(connection, skus)


def status_counts(engine: Engine, scope: SaleScope) -> dict[str, int]:
    """Return the number of recorded orders of the sale per status."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(Order.status, func.count())
            .where(Order.customer_id.startswith(scope.customer_prefix, autoescape=True))
            .group_by(Order.status)
        ).all()
    return {_status(status): int(count) for status, count in rows}


def audit_sale(engine: Engine, scope: SaleScope) -> Audit:
    """Read every figure of the sale and check its ledger."""
    mine = Order.customer_id.startswith(scope.customer_prefix, autoescape=True)
    with engine.connect() as connection:
        products = _products(connection, scope.skus)
        ledger = _check_ledger(connection, scope.skus)
        waits = connection.execute(
            select(Order.lock_wait_ms).where(mine, Order.lock_wait_ms.is_not(None))
        ).scalars()
        lock_waits_ms = sorted(float(wait) for wait in waits if wait is not None)
        republished = connection.execute(
            select(func.count()).where(mine, Order.republications > 0)
        ).scalar_one()
    return Audit(
        counts=status_counts(engine, scope),
        initial_units=sum(initial for initial, _ in products.values()),
        sold_units=sum(initial - stock for initial, stock in products.values()),
        oversold_units=ledger.oversold_units,
        ledger_problems=ledger.problems,
        lock_waits_ms=lock_waits_ms,
        republished=int(republished),
    )


def _products(connection: Connection, skus: Sequence[str] | None) -> dict[str, tuple[int, int]]:
    """SKU -> (initial stock, stock)."""
    query = select(Product.sku, Product.initial_stock, Product.stock)
    if skus is not None:
        query = query.where(Product.sku.in_(skus))
    return {
        str(row.sku): (int(row.initial_stock), int(row.stock)) for row in connection.execute(query)
    }


def _check_ledger(connection: Connection, skus: Sequence[str] | None) -> LedgerCheck:
    products = _products(connection, skus)
    on_skus_items = OrderItem.sku.in_(skus) if skus is not None else true()
    on_skus_moves = StockMovement.sku.in_(skus) if skus is not None else true()
    confirmed = Order.status == OrderStatus.CONFIRMED
    confirmed_per_sku = _per_key(
        connection.execute(
            select(OrderItem.sku, func.sum(OrderItem.quantity), func.count())
            .join(Order, Order.id == OrderItem.order_id)
            .where(on_skus_items, confirmed)
            .group_by(OrderItem.sku)
        ).all()
    )
    moved_per_sku = _per_key(
        connection.execute(
            select(StockMovement.sku, func.sum(StockMovement.delta), func.count())
            .where(on_skus_moves)
            .group_by(StockMovement.sku)
        ).all()
    )
    lines_per_order: dict[Any, int] = {
        order_id: int(lines)
        for order_id, lines in connection.execute(
            select(OrderItem.order_id, func.count())
            .join(Order, Order.id == OrderItem.order_id)
            .where(on_skus_items, confirmed)
            .group_by(OrderItem.order_id)
        )
    }
    moves_per_order = connection.execute(
        select(StockMovement.order_id, Order.status, func.count())
        .join(Order, Order.id == StockMovement.order_id)
        .where(on_skus_moves)
        .group_by(StockMovement.order_id, Order.status)
    ).all()
    problems = _ledger_problems(
        list(skus) if skus is not None else sorted(products),
        products,
        confirmed_per_sku,
        moved_per_sku,
    )
    oversold = sum(
        max(0, confirmed_per_sku.get(sku, (0, 0))[0] - initial) + max(0, -stock)
        for sku, (initial, stock) in products.items()
    )
    # Units that left stock with no movement to show for it.
    duplicates = sum(
        max(0, initial - stock + moved_per_sku.get(sku, (0, 0))[0])
        for sku, (initial, stock) in products.items()
    )
    stray = 0
    for order_id, status, moves in moves_per_order:
        if _status(status) != OrderStatus.CONFIRMED.value:
            stray += int(moves)
            duplicates += int(moves)
            continue
        lines = lines_per_order.get(order_id, 0)
        if int(moves) != lines:
            problems.append(f"order {order_id}: {moves} movements for {lines} lines")
        duplicates += max(0, int(moves) - lines)
    if stray:
        problems.append(f"{stray} stock movements belong to orders that are not confirmed")
    unmoved = lines_per_order.keys() - {order_id for order_id, _, _ in moves_per_order}
    if unmoved:
        problems.append(f"{len(unmoved)} confirmed orders have no stock movement")
    return LedgerCheck(problems=problems, oversold_units=oversold, duplicate_movements=duplicates)


def _ledger_problems(
    skus: Sequence[str],
    products: dict[str, tuple[int, int]],
    confirmed: dict[str, tuple[int, int]],
    moved: dict[str, tuple[int, int]],
) -> list[str]:
    """Per SKU: initial - stock == confirmed units == -sum(movements), one movement per line."""
    problems = []
    for sku in skus:
        if sku not in products:
            problems.append(f"{sku}: product row missing")
            continue
        initial, stock = products[sku]
        units, lines = confirmed.get(sku, (0, 0))
        delta, movements = moved.get(sku, (0, 0))
        if stock < 0:
            problems.append(f"{sku}: stock {stock} below zero")
        if initial - stock != units:
            problems.append(f"{sku}: stock fell by {initial - stock}, confirmed units {units}")
        if -delta != units:
            problems.append(f"{sku}: ledger moved {-delta} units, confirmed units {units}")
        if movements != lines:
            problems.append(f"{sku}: {movements} movements for {lines} confirmed lines")
    return problems


def _per_key(rows: Sequence[Any]) -> dict[str, tuple[int, int]]:
    return {str(key): (int(total or 0), int(count)) for key, total, count in rows}


def _status(value: object) -> str:
    return value.value if isinstance(value, OrderStatus) else str(value)
