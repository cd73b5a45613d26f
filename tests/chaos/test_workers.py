"""Scenario 5: worker pool processes die in the middle of tasks.

Pool processes of both workers are SIGKILLed mid-task several times: the main
process replaces them and, with ``task_reject_on_worker_lost``, gives the lost
task's message back at once. Nothing may stay pending, in the database or on the
broker, and no order may move stock twice.

A whole worker (main process and pool) SIGKILLed, and a fresh one started: the
Redis broker hands the dead worker's unacknowledged messages out again once the
visibility timeout (10 s here) has passed and kombu's restore sweep runs (the app
sets its interval to a quarter of the timeout; kombu's default is 100 s).
"""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import Engine

from tests.chaos.figures import assert_sound, decided_ids, scalar_rows
from tests.chaos.harness import SHORT_LIMITS, FlashSale, broker_backlog, drain, log_lines
from tests.chaos.report import Recorder
from tests.sale import check_invariants
from tests.spawners import kill_worker
from worker.demo.stack import LocalStack, WorkerProcess

POOL_KILLS = 6
KILL_GAP_S = 0.5


def kill_pool_processes(workers: list[WorkerProcess], times: int) -> list[int]:
    """SIGKILL one busy pool process ``times`` times, alternating workers; return the pids."""
    killed: list[int] = []
    for round_ in range(times):
        pids = workers[round_ % len(workers)].pool_pids()
        if pids:
            os.kill(pids[round_ % len(pids)], signal.SIGKILL)
            killed.append(pids[round_ % len(pids)])
        time.sleep(KILL_GAP_S)
    return killed


def test_pool_processes_killed_mid_task(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    sale = FlashSale(stack, observer)
    result, killed = sale.run(
        lambda: kill_pool_processes(stack.workers[:2], POOL_KILLS), env=SHORT_LIMITS
    )
    drained_s = drain(stack)
    backlog = broker_backlog(stack)
    lost_processes = log_lines(stack.workers, "exited with 'signal 9 (SIGKILL)'")
    redelivered = int(scalar_rows(observer, "SELECT count(*) FROM orders WHERE attempts > 1")[0][0])
    reliability.record(
        "5-pool-process-killed",
        f"{len(killed)} worker pool processes SIGKILLed mid-task (2 workers x 2 processes)",
        result,
        notes=(
            f"{lost_processes} kills hit a running task (requeued); {redelivered} orders "
            f"delivered more than once (retries included); broker empty {drained_s} s after"
        ),
        pool_processes_killed=len(killed),
        kills_mid_task=lost_processes,
        orders_delivered_more_than_once=redelivered,
        broker_drained_s_after_sale=drained_s,
        broker_backlog=backlog,
        reasons=sale.reasons(),
    )
    assert_sound(observer, sale.ids, result)
    assert len(killed) == POOL_KILLS
    # A kill that lands between two tasks loses no task and logs nothing.
    assert 0 < lost_processes <= POOL_KILLS
    assert backlog == (0, 0), "messages left queued or unacknowledged"
    assert all(len(worker.pool_pids()) == 2 for worker in stack.workers), "pool not replenished"


def crash_and_replace(stack: LocalStack) -> tuple[int, float]:
    """SIGKILL the second worker whole, start a fresh one; return its unacked count and when."""
    kill_worker(stack.workers[1])
    crashed_at = time.monotonic()
    orphans = broker_backlog(stack)[1]
    stack.start_worker(concurrency=2, extra_env=SHORT_LIMITS)
    return orphans, crashed_at


def test_whole_worker_killed_and_replaced(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    sale = FlashSale(stack, observer)
    result, (orphans, crashed_at) = sale.run(lambda: crash_and_replace(stack), env=SHORT_LIMITS)
    drained_s = drain(stack)
    since_crash_s = round(time.monotonic() - crashed_at, 1)
    backlog = broker_backlog(stack)
    reliability.record(
        "5b-worker-killed",
        "A whole worker SIGKILLed mid-sale, a fresh worker started",
        result,
        notes=f"{orphans} messages orphaned; broker empty {since_crash_s} s after the crash",
        orphaned_messages=orphans,
        broker_drained_s_after_sale=drained_s,
        broker_empty_s_after_crash=since_crash_s,
        broker_backlog=backlog,
    )
    assert orphans > 0, "the killed worker held no message: nothing to redeliver"
    assert backlog == (0, 0), f"dead worker's messages not redelivered: {backlog}"
    # What the code guarantees for orders sent without the intake record: kombu's
    # Redis transport pops a message (BRPOP) before it records it as unacked, so the
    # one message on the killed worker's consumer connection at that instant can be
    # gone (measured: 1 order in 2 of 3 runs of 2,000 on a loaded host, none in
    # others). Orders taken through the intake record are republished by the relay
    # (scenario 13). Everything else is decided, once, without oversell.
    assert result.lost <= 1, result
    assert (result.oversold, result.duplicates) == (0, 0), result
    check_invariants(observer, decided_ids(observer, sale.ids))
