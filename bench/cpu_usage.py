"""CPU time spent by each role of a benchmark run, read from /proc (Linux).

On a small host every process of the stack competes for the same cores, so
orders/s follows the CPU each order costs in *all* of them: the Celery main
process, its pool, PostgreSQL, the broker and the lock nodes.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, event, text

from worker.demo.stack import LocalStack

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """Return user + system CPU seconds of ``pid`` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # Fields 14 and 15 of stat(5) (utime, stime); index 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


#: The application_name of the benchmark's own connections, left out of "postgresql".
HARNESS = "e2e-bench-harness"


def mark_as_harness(engine: Engine) -> None:
    """Name the connections of ``engine`` so that their backends are not counted."""

    @event.listens_for(engine, "connect")
    def _name(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET application_name = '{HARNESS}'")
        dbapi_connection.commit()


def roles(stack: LocalStack, engine: Engine) -> dict[str, list[int]]:
    """Return the pids of each role of a running stack (``engine``: the harness's)."""
    with engine.connect() as connection:
        backends = connection.execute(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name <> :harness"
            ),
            {"harness": HARNESS},
        ).scalars()
        postgres = [int(pid) for pid in backends]
    return {
        "celery main": [worker.pid for worker in stack.workers],
        "celery pool": [pid for worker in stack.workers for pid in worker.pool_pids()],
        "postgresql": postgres,
        "broker": [stack.broker.process.pid] if stack.broker and stack.broker.process else [],
        "lock nodes": [node.process.pid for node in stack.lock_nodes if node.process],
    }


def snapshot(pids: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """Return the CPU seconds used so far by each process, by role."""
    return {role: {pid: process_cpu_s(pid) for pid in group} for role, group in pids.items()}


def host_busy_s() -> float:
    """Return the CPU seconds all cores spent not idle since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS_PER_S


def per_order_ms(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], orders: int
) -> dict[str, float]:
    """Return each role's CPU milliseconds per order between two snapshots.

    A process that started in between (a database connection opened late) counts
    from zero.
    """
    return {
        role: sum(cpu - before.get(role, {}).get(pid, 0.0) for pid, cpu in group.items())
        * 1000
        / orders
        for role, group in after.items()
    }


def process_switches(pid: int) -> tuple[int, int]:
    """Return (voluntary, nonvoluntary) context switches of ``pid`` ((0, 0) when gone)."""
    counts = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in counts:
                counts[key] = int(value)
    except OSError:
        pass
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def switches_snapshot(pids: dict[str, list[int]]) -> dict[str, dict[int, tuple[int, int]]]:
    """Return the context switches so far of each process, by role."""
    return {role: {pid: process_switches(pid) for pid in group} for role, group in pids.items()}


def switches_per_order(
    before: dict[str, dict[int, tuple[int, int]]],
    after: dict[str, dict[int, tuple[int, int]]],
    orders: int,
) -> dict[str, dict[str, float]]:
    """Return each role's voluntary and nonvoluntary context switches per order."""
    result: dict[str, dict[str, float]] = {}
    for role, group in after.items():
        voluntary = nonvoluntary = 0
        for pid, (vol, nonvol) in group.items():
            vol0, nonvol0 = before.get(role, {}).get(pid, (0, 0))
            voluntary += vol - vol0
            nonvoluntary += nonvol - nonvol0
        result[role] = {"voluntary": voluntary / orders, "nonvoluntary": nonvoluntary / orders}
    return result
