"""Scenario 8: a lock holder that slept through its lease wakes up and tries to write.

In process, deterministic: the test takes a fenced lease on the hot SKU and
"pauses" past its TTL while real workers sell that SKU under newer leases; then
it wakes, records its own order and settles with its old fence in one
transaction. The database guard refuses (`StaleFence`), nothing it did remains,
and its order, handed to the workers like a retry, is decided normally.

End to end: a whole worker is paused (SIGSTOP of its process group, as a VM or
a GC pause would) for twice the lease TTL while it may hold a lease, then resumed;
the other worker sells meanwhile. Whatever they were doing, the lease
check or the database guard aborts the stale settlement; the ledger's fences
stay ordered and nothing is oversold.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from sqlalchemy import Engine

from locking import Lease, Redlock
from tasks.errors import StaleFence
from tasks.pg_store import PostgresOrderStore
from tasks.validation import parse_order
from tests.chaos.figures import assert_sound, fence_violations, scalar_rows
from tests.chaos.harness import FlashSale, log_lines, wait_until
from tests.chaos.report import Recorder
from tests.sale import enqueue, producer
from worker.demo.stack import LocalStack

STALE_TTL_MS = 500
#: Scenario 8b: the workers' lease TTL, and how long a pool process stays frozen.
WORKER_TTL_MS = 1000
FREEZE_S = 2 * WORKER_TTL_MS / 1000
FREEZES = 4
ABORTED = "settlement aborted, will retry"


def product_fence(engine: Engine, sku: str) -> int:
    return int(scalar_rows(engine, "SELECT fence FROM products WHERE sku = :sku", sku=sku)[0][0])


def wake_up_and_settle(engine: Engine, lease: Lease, payload: dict[str, object]) -> StaleFence:
    """As the stale holder: record its order and settle with its fence; return the refusal."""
    request = parse_order(payload)
    store = PostgresOrderStore(engine=engine)
    try:
        with pytest.raises(StaleFence) as refused:
            store.settle(
                request,
                record=True,
                fence=lease.fence,
                lease_token=lease.token,
                wait_ms=None,
                budget_ms=None,
            )
    finally:
        store.dispose()
    return refused.value


def test_a_stale_holder_is_refused_by_the_database_guard(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    sale = FlashSale(stack, observer)
    redlock = Redlock([node.url for node in stack.lock_nodes])
    try:
        stale = redlock.acquire("sku:HOT", ttl_ms=STALE_TTL_MS, fence=True)
        assert stale.fence is not None
        sale.start_workers()
        sale.open()  # ... and the holder sleeps while newer leases sell HOT
        wait_until(
            lambda: product_fence(observer, "HOT") > (stale.fence or 0),
            timeout_s=60,
            what="a newer lease to write HOT",
        )
        payload = {
            "order_id": str(uuid.uuid4()),
            "customer_id": "stale-holder",
            "items": [{"sku": "HOT", "quantity": 1}],
        }
        expired = not stale.is_valid
        fence_at_wake = product_fence(observer, "HOT")
        refusal = wake_up_and_settle(observer, stale, payload)
    finally:
        redlock.close()
    left_behind = scalar_rows(
        observer,
        "SELECT (SELECT count(*) FROM orders WHERE id = CAST(:id AS uuid)),"
        # Fences count per SKU: only HOT's ledger can hold a trace of the stale lease.
        " (SELECT count(*) FROM stock_movements WHERE sku = 'HOT' AND fence = :fence)",
        id=payload["order_id"],
        fence=stale.fence,
    )[0]
    with producer(sale.broker_url) as app:  # the stale holder's task, retried
        enqueue(app, [payload])
    sale.ids.append(str(payload["order_id"]))
    result = sale.finish()
    violations = fence_violations(observer)
    reliability.record(
        "8-stale-holder",
        "Stale lock holder (lease lapsed, newer leases sold) settles with its old fence",
        result,
        notes=f"refused by the database: {refusal}; its order then decided by the workers",
        stale_fence=stale.fence,
        product_fence_at_wake=fence_at_wake,
        fence_violations=len(violations),
    )
    assert expired, "the stale lease was still valid when it woke"
    assert left_behind == (0, 0), "the stale holder's transaction left a trace"
    assert_sound(observer, sale.ids, result)
    assert violations == []


def freeze_workers(stack: LocalStack, times: int) -> int:
    """Pause a whole worker (SIGSTOP its process group) for `FREEZE_S`, then resume it.

    Workers take turns, so the other one sells under newer leases meanwhile.
    """
    frozen = 0
    for round_ in range(times):
        group = stack.workers[round_ % len(stack.workers)].pid
        os.killpg(group, signal.SIGSTOP)
        try:
            time.sleep(FREEZE_S)
        finally:
            os.killpg(group, signal.SIGCONT)
        frozen += 1
        time.sleep(0.5)
    return frozen


def test_pool_processes_frozen_past_their_lease(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    sale = FlashSale(stack, observer)
    result, frozen = sale.run(
        lambda: freeze_workers(stack, FREEZES),
        env={"REDLOCK_TTL_MS": str(WORKER_TTL_MS)},
    )
    aborted = log_lines(stack.workers, ABORTED)
    refused = log_lines(stack.workers, "newer lease than fence")
    violations = fence_violations(observer)
    reliability.record(
        "8-stale-holder",
        f"A worker paused (SIGSTOP) {FREEZE_S:.0f} s, twice the lease TTL, {FREEZES} times",
        result,
        notes=(
            f"{aborted} settlements aborted on waking ({refused} by the fence guard, "
            "the rest by the lease check); ledger fences ordered"
        ),
        settlements_aborted=aborted,
        stale_fence_refusals=refused,
        fence_violations=len(violations),
        reasons=sale.reasons(),
    )
    assert frozen == FREEZES
    assert_sound(observer, sale.ids, result)
    assert violations == []
