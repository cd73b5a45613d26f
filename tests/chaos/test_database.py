"""Scenario 7: PostgreSQL drops every worker connection, several times, mid-sale.

``pg_terminate_backend`` on every backend of the test database except the test's
own (tagged) connections: a worker's statement then fails, the transaction is
rolled back, the task retries (``DatabaseUnavailable``) on a fresh connection,
and nothing is lost or moved twice.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine

from tests.chaos.figures import OBSERVER, assert_sound, scalar_rows
from tests.chaos.harness import FlashSale, log_lines
from tests.chaos.report import Recorder
from worker.demo.stack import LocalStack

KILL_ROUNDS = 4
KILL_GAP_S = 1.5


def terminate_backends(engine: Engine) -> int:
    """Terminate every other backend of this database but the observer's; return the count."""
    rows = scalar_rows(
        engine,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND application_name <> :observer",
        observer=OBSERVER,
    )
    return int(rows[0][0])


def kill_connections_repeatedly(engine: Engine) -> list[int]:
    """Run `KILL_ROUNDS` rounds of `terminate_backends`, `KILL_GAP_S` apart."""
    killed = []
    for _ in range(KILL_ROUNDS):
        killed.append(terminate_backends(engine))
        time.sleep(KILL_GAP_S)
    return killed


def test_database_connections_killed_mid_sale(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    sale = FlashSale(stack, observer)
    # INFO: a task that met a dropped connection logs its retry.
    result, killed = sale.run(lambda: kill_connections_repeatedly(observer), loglevel="INFO")
    outages = log_lines(stack.workers, "database unavailable")
    reliability.record(
        "7-db-connections-killed",
        f"PostgreSQL backends terminated {KILL_ROUNDS} times mid-sale",
        result,
        notes=f"{sum(killed)} backends terminated; {outages} task runs saw the database drop",
        backends_terminated=killed,
        database_unavailable_logged=outages,
        reasons=sale.reasons(),
    )
    assert_sound(observer, sale.ids, result)
    assert all(count > 0 for count in killed), f"a round found no worker connection: {killed}"
    assert outages > 0, "no task met a dropped connection: scenario did not bite"
    assert not [key for key in sale.reasons() if key.startswith("failed:")]
