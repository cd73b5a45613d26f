"""`check_ledger`, the one ledger check of the demo, the tests and the chaos report.

Each case breaks one invariant by hand on a SQLite database and expects the
check to name it and count it; a sound ledger has no problem at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from tasks.db import create_db_engine, session_factory
from tasks.migrate import upgrade
from tasks.models import Order, OrderItem, OrderStatus, Product, StockMovement
from worker.demo.audit import check_ledger


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database with SKU A (10 units) and one confirmed order of 2 units."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    upgrade(url)
    engine = create_db_engine(url)
    with session_factory(engine).begin() as session:
        session.add(Product(sku="A", name="A", stock=8, initial_stock=10, fence=0))
        session.add(Product(sku="B", name="B", stock=5, initial_stock=5, fence=0))
    add_order(engine, OrderStatus.CONFIRMED, quantity=2, movements=1)
    yield engine
    engine.dispose()


def add_order(
    engine: Engine, status: OrderStatus, *, quantity: int, movements: int, stray_sku: str = ""
) -> uuid.UUID:
    """Record an order of ``quantity`` units of A with ``movements`` stock movements of A.

    :param stray_sku: also move this SKU, which the order has no line for.
    """
    order_id = uuid.uuid4()
    with session_factory(engine).begin() as session:
        session.add(Order(id=order_id, customer_id="c", status=status, payload_hash="h"))
        session.flush()
        session.add(OrderItem(order_id=order_id, sku="A", quantity=quantity))
        for _ in range(movements):
            session.add(StockMovement(order_id=order_id, sku="A", delta=-quantity, fence=1))
        if stray_sku:
            session.add(StockMovement(order_id=order_id, sku=stray_sku, delta=-1, fence=1))
    return order_id


def set_stock(engine: Engine, sku: str, stock: int) -> None:
    """Set a product's stock, past the schema's CHECK (stock >= 0) when asked to."""
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        connection.execute(update(Product).where(Product.sku == sku).values(stock=stock))
        connection.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")


def test_a_sound_ledger_has_no_problem(engine: Engine) -> None:
    check = check_ledger(engine)
    assert (check.problems, check.oversold_units, check.duplicate_movements) == ([], 0, 0)


def test_stock_below_zero_is_oversold(engine: Engine) -> None:
    set_stock(engine, "B", -1)
    check = check_ledger(engine)
    assert "B: stock -1 below zero" in check.problems
    assert check.oversold_units == 1


def test_confirmed_units_beyond_the_initial_stock_are_oversold(engine: Engine) -> None:
    add_order(engine, OrderStatus.CONFIRMED, quantity=9, movements=1)
    set_stock(engine, "A", -1)
    assert check_ledger(engine).oversold_units == 1 + 1  # 11 confirmed of 10, stock -1


def test_a_movement_beyond_the_order_lines_is_a_duplicate(engine: Engine) -> None:
    order_id = add_order(engine, OrderStatus.CONFIRMED, quantity=1, movements=1, stray_sku="B")
    set_stock(engine, "A", 7)
    check = check_ledger(engine)
    assert f"order {order_id}: 2 movements for 1 lines" in check.problems
    assert check.duplicate_movements == 1


def test_a_movement_of_a_rejected_order_is_a_duplicate(engine: Engine) -> None:
    add_order(engine, OrderStatus.REJECTED, quantity=1, movements=1)
    check = check_ledger(engine)
    assert "1 stock movements belong to orders that are not confirmed" in check.problems
    assert check.duplicate_movements == 1


def test_a_confirmed_order_without_movement_is_named(engine: Engine) -> None:
    add_order(engine, OrderStatus.CONFIRMED, quantity=1, movements=0)
    set_stock(engine, "A", 7)
    check = check_ledger(engine)
    assert "1 confirmed orders have no stock movement" in check.problems
    assert check.duplicate_movements == 1  # a unit left stock without a movement


def test_the_check_is_scoped_to_the_skus_given(engine: Engine) -> None:
    set_stock(engine, "B", -1)
    assert check_ledger(engine, ["A"]).problems == []
