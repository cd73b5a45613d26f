"""Scenario 10, cut mid-lease: the holder loses every lock node and the database.

A holder (the test, as in scenario 8) is cut from every lock node and from the
database right after it checked its lease and sent its settlement; the lease
expires, the workers sell under newer fences, then the links heal and the late
settlement is refused by the fence guard. The holder reaches the nodes and the
database through links of its own (tests/chaos/links.py), as the groups of
tests/chaos/test_partitions.py do.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, text

from locking import Redlock, RetryPolicy
from tasks.db import create_db_engine
from tasks.errors import StaleFence
from tasks.placement import COMMIT_MARGIN_MS
from tests.chaos.figures import assert_sound, fence_violations
from tests.chaos.harness import wait_until
from tests.chaos.links import Links, database_link
from tests.chaos.partition_probes import WORKER_ENV, fenced_settlements, sale_of
from tests.chaos.report import Recorder
from tests.chaos.test_stale_holder import (
    product_fence,
    retry_by_the_workers,
    traces_of,
    wake_up_and_settle,
)
from worker.demo.stack import LocalStack

SCENARIO = "10-partition"
#: The holder that is cut mid-lease: a lease that lapses quickly.
STALE_TTL_MS = 1000


@pytest.fixture
def holder_links(stack: LocalStack) -> Iterator[Links]:
    """The holder's own links to the stack's three lock nodes, closed after the test."""
    links = Links(stack.lock_nodes)
    yield links
    links.close()


def test_holder_cut_mid_lease_is_refused_by_the_fence_guard(
    stack: LocalStack,
    observer: Engine,
    database_url: str,
    holder_links: Links,
    reliability: Recorder,
) -> None:
    db_proxy, holder_db_url = database_link(database_url)
    holder_engine = create_db_engine(holder_db_url, pool_size=1)
    redlock = Redlock(holder_links.urls)
    sale = sale_of(stack, observer)
    payload: dict[str, object] = {
        "order_id": str(uuid.uuid4()),
        "customer_id": "cut-holder",
        "items": [{"sku": "HOT", "quantity": 1}],
    }
    outcome: list[StaleFence | BaseException] = []
    try:
        with holder_engine.connect() as connection:  # its one database connection, open
            connection.execute(text("SELECT 1"))
        sale.start_workers(env=WORKER_ENV)
        stale = redlock.acquire(
            "sku:HOT", ttl_ms=STALE_TTL_MS, fence=True, retry=RetryPolicy(attempts=50)
        )
        assert stale.fence is not None
        # What the order path checks right before it settles; the settlement then
        # leaves while the lease is valid, into a partition.
        stale.check(margin_ms=COMMIT_MARGIN_MS)
        valid_at_send_ms = stale.remaining_ms()
        db_proxy.partition()
        holder_links.partition([1, 2, 3])
        sent_s = time.monotonic()

        def late_settlement() -> None:
            try:
                outcome.append(wake_up_and_settle(holder_engine, stale, payload))
            except BaseException as error:  # reported by the assertions below
                outcome.append(error)

        settler = threading.Thread(target=late_settlement, name="cut-holder", daemon=True)
        settler.start()
        sale.open()  # the workers sell HOT once the lease lapses on the nodes
        wait_until(
            lambda: product_fence(observer, "HOT") > (stale.fence or 0),
            timeout_s=60,
            what="a newer lease to write HOT",
        )
        lapsed_on_nodes = all(
            redis.Redis(host="127.0.0.1", port=node.port).get("redlock:sku:HOT")
            != stale.token.encode()
            for node in stack.lock_nodes
        )
        fence_at_heal = product_fence(observer, "HOT")
        db_proxy.heal()
        holder_links.heal()
        settler.join(30)
        late_by_s = time.monotonic() - sent_s
        redlock.release(stale, confirm=False)  # as the order path does; its token is gone
    finally:
        redlock.close()
        holder_engine.dispose()
        db_proxy.close()
    left_behind = traces_of(observer, payload, stale.fence)
    retry_by_the_workers(sale, payload)
    result = sale.finish()
    violations = fence_violations(observer)
    refusal = outcome[0] if outcome else None
    reliability.record(
        SCENARIO,
        "Cut mid-lease: the holder loses every lock node and the database after sending "
        "its settlement",
        result,
        notes=(
            f"settlement sent with {valid_at_send_ms:.0f} ms of validity left, delivered "
            f"{late_by_s:.1f} s later: {refusal!r}; nothing of it stayed; its order then "
            "decided by the workers"
        ),
        stale_fence=stale.fence,
        product_fence_at_heal=fence_at_heal,
        lease_lapsed_on_nodes=lapsed_on_nodes,
        late_by_s=round(late_by_s, 1),
        fenced_settlements=fenced_settlements(observer),
        fence_violations=len(violations),
    )
    assert isinstance(refusal, StaleFence), f"the late settlement was not refused: {refusal!r}"
    assert lapsed_on_nodes
    assert left_behind == (0, 0), "the cut holder's transaction left a trace"
    assert_sound(observer, sale.ids, result)
    assert violations == []
