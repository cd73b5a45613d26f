"""Read a sale back from the database: order counts, oversold units, the ledger, lock waits.

A sale is scoped by its customers' id prefix and its SKUs, so the audit is exact
on a database that holds other orders and products too. Nothing here writes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select

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
        products = {
            row.sku: (int(row.initial_stock), int(row.stock))
            for row in connection.execute(
                select(Product.sku, Product.initial_stock, Product.stock).where(
                    Product.sku.in_(scope.skus)
                )
            )
        }
        confirmed = _per_sku(
            connection.execute(
                select(OrderItem.sku, func.sum(OrderItem.quantity), func.count())
                .join(Order, Order.id == OrderItem.order_id)
                .where(mine, Order.status == OrderStatus.CONFIRMED)
                .group_by(OrderItem.sku)
            ).all()
        )
        moved = _per_sku(
            connection.execute(
                select(StockMovement.sku, func.sum(StockMovement.delta), func.count())
                .where(StockMovement.sku.in_(scope.skus))
                .group_by(StockMovement.sku)
            ).all()
        )
        stray = connection.execute(
            select(func.count())
            .select_from(StockMovement)
            .join(Order, Order.id == StockMovement.order_id)
            .where(StockMovement.sku.in_(scope.skus), Order.status != OrderStatus.CONFIRMED)
        ).scalar_one()
        waits = connection.execute(
            select(Order.lock_wait_ms).where(mine, Order.lock_wait_ms.is_not(None))
        ).scalars()
        lock_waits_ms = sorted(float(wait) for wait in waits if wait is not None)
        republished = connection.execute(
            select(func.count()).where(mine, Order.republications > 0)
        ).scalar_one()
    problems = _ledger_problems(scope.skus, products, confirmed, moved)
    if stray:
        problems.append(f"{stray} stock movements belong to orders that are not confirmed")
    return Audit(
        counts=status_counts(engine, scope),
        initial_units=sum(initial for initial, _ in products.values()),
        sold_units=sum(initial - stock for initial, stock in products.values()),
        oversold_units=sum(
            max(0, confirmed.get(sku, (0, 0))[0] - initial)
            for sku, (initial, _) in products.items()
        ),
        ledger_problems=problems,
        lock_waits_ms=lock_waits_ms,
        republished=int(republished),
    )


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of sorted values (None when there are none).

    :param fraction: 0.5 for the median, 0.99 for p99.
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


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


def _per_sku(rows: Sequence[Any]) -> dict[str, tuple[int, int]]:
    return {str(sku): (int(total or 0), int(count)) for sku, total, count in rows}


def _status(value: object) -> str:
    return value.value if isinstance(value, OrderStatus) else str(value)
