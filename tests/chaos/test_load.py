"""Scenario 9: load. 20,000 orders as fast as four producer threads can send them.

Two workers of two processes each sell them all; the invariants must hold and
the pool processes' memory must stay flat: resident set size (VmRSS) at the
end stays within a generous bound of what it was at the start. Throughput is
measured and reported, never asserted.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import Engine

from tests.chaos.figures import assert_sound
from tests.chaos.harness import FlashSale, stock_for, vm_rss_kb
from tests.chaos.report import Recorder
from worker.demo.stack import LocalStack

#: The brief's size; lower it (CHAOS_LOAD_ORDERS=...) for a quick local run.
LOAD_ORDERS = int(os.environ.get("CHAOS_LOAD_ORDERS", "20000"))
PRODUCER_THREADS = 4
#: Allowed growth of one pool process's RSS over the whole sale.
RSS_GROWTH_BOUND_KB = 50 * 1024
#: Share of the orders decided before the "warm" RSS sample.
WARM_UP = 0.1
LOAD_TIMEOUT_S = 420.0


def pool_rss(pids: list[int]) -> dict[int, int]:
    return {pid: vm_rss_kb(pid) for pid in pids}


@pytest.mark.timeout(LOAD_TIMEOUT_S + 120)
def test_load_twenty_thousand_orders_memory_stays_flat(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    sale = FlashSale(stack, observer, orders=LOAD_ORDERS, stock=stock_for(LOAD_ORDERS))
    workers = sale.start_workers(2, concurrency=2)
    pids = sorted(pid for worker in workers for pid in worker.pool_pids())
    at_start = pool_rss(pids)
    sale.open(threads=PRODUCER_THREADS)
    sale.wait_decided(WARM_UP, timeout_s=LOAD_TIMEOUT_S)
    warm = pool_rss(pids)
    result = sale.finish(timeout_s=LOAD_TIMEOUT_S)
    pids_now = sorted(pid for worker in workers for pid in worker.pool_pids())
    at_end = pool_rss(pids) if pids_now == pids else {}
    growth = {pid: at_end[pid] - at_start[pid] for pid in at_end}
    reliability.record(
        "9-load",
        f"Load: {LOAD_ORDERS:,} orders from {PRODUCER_THREADS} producer threads, 2 workers x 2",
        result,
        notes=(
            f"{sale.orders_per_s()} orders/s end to end (enqueued in {sale.enqueued_s:.1f} s); "
            f"pool RSS {_mb(at_start)} MB at start, {_mb(warm)} warm, {_mb(at_end)} at end"
        ),
        orders_per_s=sale.orders_per_s(),
        enqueue_s=round(sale.enqueued_s, 1),
        sale_s=round(sale.elapsed_s, 1),
        rss_kb_start=at_start,
        rss_kb_warm=warm,
        rss_kb_end=at_end,
        rss_growth_kb=growth,
    )
    assert_sound(observer, sale.ids, result)
    assert pids_now == pids, "pool processes were replaced during the sale"
    assert max(growth.values()) < RSS_GROWTH_BOUND_KB, f"RSS grew (kB): {growth}"


def _mb(rss: dict[int, int]) -> str:
    return "/".join(f"{kb / 1024:.0f}" for kb in rss.values()) or "-"
