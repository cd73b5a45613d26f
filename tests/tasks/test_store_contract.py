"""The `OrderStore` contract, held by the PostgreSQL, SQLite and in-memory stores alike.

Only the store's own interface is used here, so that the in-memory fake
(tests/fakes.py) is held to exactly what the real stores do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tasks.db import create_db_engine
from tasks.errors import OrderConflict, OverBudget, StaleFence
from tasks.migrate import upgrade
from tasks.models import OrderStatus
from tasks.store import OrderStore, StepResult, StoreOptions
from tasks.validation import OrderRequest
from tests.domain import request
from tests.fakes import InMemoryOrderStore
from tests.sale import seed_products
from worker.wiring import build_store

MakeStore = Callable[[Mapping[str, int]], OrderStore]
OPTIONS = StoreOptions(max_deliveries=3)


@pytest.fixture(params=["postgresql", "sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Build a store over a fresh database holding the given products (SKU -> stock)."""
    disposers: list[Callable[[], None]] = []

    def make(products: Mapping[str, int]) -> OrderStore:
        if request.param == "memory":
            return InMemoryOrderStore(products=products, options=OPTIONS)
        if request.param == "postgresql":
            url = request.getfixturevalue("database_url")
        else:
            url = f"sqlite:///{tmp_path / 'orders.sqlite3'}"
            upgrade(url)
        engine = create_db_engine(url)
        seed_products(engine, products)
        store = build_store(engine, OPTIONS)
        disposers.extend([store.dispose, engine.dispose])
        return store

    yield make
    for dispose in disposers:
        dispose()


def settle(
    store: OrderStore,
    order: OrderRequest,
    *,
    record: bool = True,
    fence: int | None = None,
    lease_token: str | None = None,
    budget_ms: float | None = None,
) -> StepResult:
    """A settle step with the defaults of a lock-less run."""
    return store.settle(
        order,
        record=record,
        fence=fence,
        lease_token=lease_token,
        wait_ms=None,
        budget_ms=budget_ms,
    )


def test_a_settle_step_records_and_decides_every_waiting_order_it_can(
    make_store: MakeStore,
) -> None:
    store = make_store({"A": 2})
    waiting = [request({"A": 1}) for _ in range(2)]
    for order in waiting:
        assert store.record(order).state.status is OrderStatus.PENDING
    late = request({"A": 1})
    step = store.settle(late, record=True, fence=1, lease_token="t1", wait_ms=1.0, budget_ms=5e3)
    assert (step.state.status, step.state.reason) == (OrderStatus.REJECTED, "insufficient_stock")
    outcomes = {d.order_id: (d.status, d.reason) for d in step.decisions}
    assert outcomes == {
        waiting[0].order_id: (OrderStatus.CONFIRMED, None),
        waiting[1].order_id: (OrderStatus.CONFIRMED, None),
        late.order_id: (OrderStatus.REJECTED, "insufficient_stock"),
    }
    assert all(d.age_s is not None and d.age_s >= 0 for d in step.decisions)
    assert store.highest_fence(["A"]) == 1


def test_an_order_outside_the_locked_skus_is_left_pending(make_store: MakeStore) -> None:
    store = make_store({"A": 5, "B": 5})
    both = request({"A": 1, "B": 1})
    store.record(both)
    step = settle(store, request({"A": 1}))
    assert len(step.decisions) == 1
    assert store.state(both.order_id).status is OrderStatus.PENDING


def test_an_unknown_sku_is_rejected_by_a_settlement(make_store: MakeStore) -> None:
    store = make_store({"A": 5})
    step = settle(store, request({"A": 1, "ZZ": 1}))
    assert (step.state.status, step.state.reason) == (
        OrderStatus.REJECTED,
        "unknown_sku",
    )
    assert store.known_skus(["A", "ZZ"]) == frozenset({"A"})


def test_a_replay_keeps_the_decision_and_another_payload_conflicts(make_store: MakeStore) -> None:
    store = make_store({"A": 5})
    order = request({"A": 1})
    settle(store, order)
    again = settle(store, order)
    assert (again.state.status, again.decisions) == (OrderStatus.CONFIRMED, ())
    with pytest.raises(OrderConflict):
        store.record(request({"A": 2}, order_id=str(order.order_id)))


def test_an_order_delivered_too_often_fails_once(make_store: MakeStore) -> None:
    store = make_store({"A": 5})
    order = request({"A": 1})
    steps = [store.record(order) for _ in range(4)]
    assert [len(step.decisions) for step in steps] == [0, 0, 0, 1]
    assert (steps[-1].state.status, steps[-1].state.reason) == (
        OrderStatus.FAILED,
        "too_many_attempts",
    )


def test_a_newer_fence_or_another_lease_with_the_same_fence_is_refused(
    make_store: MakeStore,
) -> None:
    store = make_store({"A": 5})
    settle(store, request({"A": 1}), fence=5, lease_token="holder")
    same = request({"A": 1})
    settle(store, same, fence=5, lease_token="holder")  # the same lease writes again
    assert store.state(same.order_id).status is OrderStatus.CONFIRMED
    for fence, token in ((4, "older"), (5, "other")):
        stale = request({"A": 1})
        with pytest.raises(StaleFence):
            settle(store, stale, fence=fence, lease_token=token)
        with pytest.raises(KeyError):
            store.state(stale.order_id)  # nothing committed, not even the record


def test_a_step_over_its_budget_commits_nothing(make_store: MakeStore) -> None:
    store = make_store({"A": 5})
    order = request({"A": 1})
    store.record(order)
    with pytest.raises(OverBudget):
        settle(store, order, record=False, fence=1, lease_token="t", budget_ms=-1.0)
    assert store.state(order.order_id).status is OrderStatus.PENDING


def test_ending_an_order_decides_it_once(make_store: MakeStore) -> None:
    store = make_store({"A": 5})
    order = request({"A": 1})
    first = store.end(order, OrderStatus.FAILED, "lock_unavailable")
    second = store.end(order, OrderStatus.REJECTED, "unknown_sku")
    assert [len(first.decisions), len(second.decisions)] == [1, 0]
    assert (second.state.status, second.state.reason) == (OrderStatus.FAILED, "lock_unavailable")
    assert second.state.attempts == 1


def test_an_invalid_order_is_stored_rejected_once(make_store: MakeStore) -> None:
    store = make_store({"A": 5})
    order = request({"A": 1})
    first = store.reject_invalid(order.order_id, "c1", "invalid_quantity")
    second = store.reject_invalid(order.order_id, "c1", "invalid_quantity")
    assert [len(first.decisions), len(second.decisions)] == [1, 0]
    assert (first.state.status, first.state.reason) == (OrderStatus.REJECTED, "invalid_quantity")
