"""The settlement rules: ``flashsale_settle`` on PostgreSQL, `tasks.settlement.settle` on SQLite.

FIFO, all-or-nothing per order, only orders inside the locked SKUs, the fence
guard, and an abort in ``before_commit`` rolling everything back.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from functools import partial

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from tasks.errors import StaleFence
from tasks.models import OrderStatus, Product
from tasks.store import token_digest
from tasks.validation import OrderRequest
from tests.domain import Decided, fences, movements, order_row, settle_now, stock
from tests.sale import seed_products
from tests.tasks.conftest import Record


@pytest.fixture
def run_settle(sessions: sessionmaker[Session]) -> Callable[..., Decided]:
    """Settle in one committed transaction: ``run_settle(["A"], fence=3)``."""
    return partial(settle_now, sessions)


def outcomes(engine: Engine, orders: Sequence[OrderRequest]) -> list[tuple[str, str | None]]:
    rows = [order_row(engine, order.order_id) for order in orders]
    return [(row.status, row.reason) if row else ("missing", None) for row in rows]


def set_fence(engine: Engine, sku: str, fence: int, token: str = "another-lease") -> None:
    """Write ``fence`` on the product as the lease ``token`` would have."""
    with engine.begin() as connection:
        connection.execute(
            update(Product)
            .where(Product.sku == sku)
            .values(fence=fence, fence_token=token_digest(token))
        )


CONFIRMED = ("confirmed", None)
PENDING = ("pending", None)
SOLD_OUT = ("rejected", "insufficient_stock")


#: FIFO is only checked on PostgreSQL: SQLite's created_at defaults to CURRENT_TIMESTAMP,
#: whole seconds, so orders recorded within one second are not kept in order there.
POSTGRESQL_ONLY = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)


@POSTGRESQL_ONLY
def test_orders_are_decided_first_in_first_out(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 5})
    # Ids in descending order, so that an id order would be the reverse of FIFO.
    ids = sorted((str(uuid.uuid4()) for _ in range(4)), reverse=True)
    orders = [record({"A": qty}, order_id=oid) for qty, oid in zip([2, 2, 2, 1], ids, strict=True)]
    run_settle(["A"])
    assert outcomes(engine, orders) == [CONFIRMED, CONFIRMED, SOLD_OUT, CONFIRMED]
    assert stock(engine) == {"A": 0}


def test_settle_reports_what_it_decided(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 1, "B": 0})
    fits, too_big = record({"A": 1}), record({"B": 1})
    decided = run_settle(["A", "B"])
    assert decided == {
        fits.order_id: (OrderStatus.CONFIRMED, None),
        too_big.order_id: (OrderStatus.REJECTED, "insufficient_stock"),
    }


def test_a_multi_line_order_is_all_or_nothing(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 5, "B": 1})
    too_big, fits = record({"A": 2, "B": 2}), record({"A": 2, "B": 1})
    run_settle(["A", "B"])
    assert outcomes(engine, [too_big, fits]) == [SOLD_OUT, CONFIRMED]
    assert movements(engine, too_big.order_id) == []
    assert movements(engine, fits.order_id) == [("A", -2), ("B", -1)]
    assert stock(engine) == {"A": 3, "B": 0}


def test_an_order_with_an_unknown_sku_is_rejected_and_moves_nothing(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 5})
    unknown = record({"A": 1, "GHOST": 1})
    run_settle(["A", "GHOST"])
    assert outcomes(engine, [unknown]) == [("rejected", "unknown_sku")]
    assert stock(engine) == {"A": 5}
    assert movements(engine) == []


def test_only_orders_whose_skus_are_all_locked_are_settled(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 5, "B": 5})
    inside, straddling, outside = record({"A": 1}), record({"A": 1, "B": 1}), record({"B": 1})
    run_settle(["A"])
    assert outcomes(engine, [inside, straddling, outside]) == [CONFIRMED, PENDING, PENDING]
    run_settle(["A", "B"])
    assert outcomes(engine, [inside, straddling, outside]) == [CONFIRMED] * 3
    assert stock(engine) == {"A": 3, "B": 3}


@POSTGRESQL_ONLY
def test_a_settlement_is_limited_to_the_oldest_orders(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 9})
    orders = [record({"A": 1}) for _ in range(3)]
    run_settle(["A"], limit=2)
    assert outcomes(engine, orders) == [CONFIRMED, CONFIRMED, PENDING]


def test_nothing_pending_means_nothing_written(
    engine: Engine, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 3})
    assert run_settle(["A"], fence=4) == {}
    assert (stock(engine), fences(engine)) == ({"A": 3}, {"A": 0})


def test_confirmed_movements_and_the_product_carry_the_fence(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 3, "B": 3})
    record({"A": 1})
    run_settle(["A", "B"], fence=7)
    assert fences(engine) == {"A": 7, "B": 0}
    with engine.connect() as connection:
        fenced = connection.exec_driver_sql("SELECT sku, fence FROM stock_movements").all()
    assert [tuple(row) for row in fenced] == [("A", 7)]


def test_the_own_order_gets_its_lock_wait_recorded(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 3})
    own, other = record({"A": 1}), record({"A": 1})
    run_settle(["A"], own_order_id=own.order_id, own_lock_wait_ms=12.5)
    own_row, other_row = order_row(engine, own.order_id), order_row(engine, other.order_id)
    assert own_row is not None and other_row is not None
    assert (own_row.lock_wait_ms, other_row.lock_wait_ms) == (12.5, None)


def test_a_product_with_a_newer_fence_makes_settle_raise_and_change_nothing(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 3})
    set_fence(engine, "A", 10)
    order = record({"A": 1})
    with pytest.raises(StaleFence) as caught:
        run_settle(["A"], fence=9)
    assert (caught.value.sku, caught.value.fence) == ("A", 9)
    assert outcomes(engine, [order]) == [PENDING]
    assert (stock(engine), fences(engine), movements(engine)) == ({"A": 3}, {"A": 10}, [])


def test_the_lease_that_wrote_a_fence_may_write_again_with_it(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 3})
    set_fence(engine, "A", 10, token="holder")
    order = record({"A": 1})
    run_settle(["A"], fence=10, token="holder")
    assert outcomes(engine, [order]) == [CONFIRMED]


def test_another_lease_with_the_same_fence_is_refused(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    # Two leases can carry one fence when a lock node lost its counters; the
    # guard used to accept both (fence <= :fence). Failed before migration 0004.
    seed_products(engine, {"A": 3})
    first = record({"A": 1})
    run_settle(["A"], fence=10, token="first-holder")
    second = record({"A": 1})
    with pytest.raises(StaleFence):
        run_settle(["A"], fence=10, token="second-holder")
    assert outcomes(engine, [first, second]) == [CONFIRMED, PENDING]
    assert (stock(engine), fences(engine)) == ({"A": 2}, {"A": 10})


def test_a_lower_fence_after_a_higher_one_fails(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 3})
    record({"A": 1})
    run_settle(["A"], fence=7)
    late = record({"A": 1})
    with pytest.raises(StaleFence):
        run_settle(["A"], fence=6)
    assert outcomes(engine, [late]) == [PENDING]
    assert (stock(engine), fences(engine)) == ({"A": 2}, {"A": 7})


def test_a_failing_before_commit_rolls_everything_back(
    engine: Engine, record: Record, run_settle: Callable[..., Decided]
) -> None:
    seed_products(engine, {"A": 3, "B": 3})
    orders = [record({"A": 1}), record({"A": 1, "B": 1}), record({"A": 9})]

    def lease_lost() -> None:
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        run_settle(["A", "B"], fence=5, before_commit=lease_lost)
    assert outcomes(engine, orders) == [PENDING] * 3
    assert (stock(engine), fences(engine), movements(engine)) == (
        {"A": 3, "B": 3},
        {"A": 0, "B": 0},
        [],
    )
