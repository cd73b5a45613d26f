"""Scenario 10: network partitions, where different workers see different lock nodes.

Every worker group reaches the lock nodes through links of its own, one
`TcpProxy` per (group, node) pair (tests/chaos/links.py); a partition holds the
bytes of a link (as TCP does through a real partition) and a heal delivers them
late. The sales are short (200 orders, 1 s leases):

- asymmetric: group A reaches nodes {1, 2}, group B {2, 3}, during a hot-SKU
  sale; probe processes (tests/chaos/leases.py) take the HOT lock through each
  group's links next to the workers and record every lease on one clock: no two
  overlap, fences rise in grant order;
- minority side: a worker cut from nodes 2 and 3 decides nothing on its own:
  its orders retry and end ``failed`` (``lock_unavailable``); once a worker with
  a quorum joins, the orders the cut worker recorded are settled by the
  holder (flat combining) or by their redelivery to it;
- heal: no group reaches a quorum for a few seconds, then the links heal; the
  time from the heal to the next decided order and the next probe lease is measured;
- control: the same probes, with node 2 (the only node A and B share) wiped
  again and again, so that the lock is broken: the lease check must find overlaps.

Scenario 10 goes on in tests/chaos/test_partition_cut_holder.py (a holder cut
mid-lease) and tests/chaos/test_partition_give_ups.py (a client that gave up
acquisitions during a partition); the helpers are in tests/chaos/partition_probes.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine

from tests.chaos.figures import (
    ANY_ID_SQL,
    assert_sound,
    decided_between,
    fence_violations,
    figures,
    scalar_rows,
)
from tests.chaos.harness import log_lines, wait_until
from tests.chaos.leases import Probes, fence_inversions, overlaps
from tests.chaos.links import Links
from tests.chaos.partition_probes import (
    TTL_MS,
    WORKER_ENV,
    fenced_settlements,
    first_decided_after,
    granted_between,
    last_decided,
    now,
    open_two_sided_sale,
    sale_of,
)
from tests.chaos.report import Recorder
from tests.sale import enqueue, producer
from worker.demo.stack import LocalStack

SCENARIO = "10-partition"
#: A retry budget (3 retries, <= 0.4 s apart) that a lasting partition outlives.
SHORT_BUDGET = {
    **WORKER_ENV,
    "ORDER_MAX_RETRIES": "3",
    "ORDER_RETRY_BASE_S": "0.1",
    "ORDER_RETRY_MAX_S": "0.4",
}
#: A retry budget (20 retries, <= 0.5 s apart, ~5 s on average) longer than `HEAL_AFTER_S`.
PATIENT_BUDGET = {
    **WORKER_ENV,
    "ORDER_MAX_RETRIES": "20",
    "ORDER_RETRY_BASE_S": "0.05",
    "ORDER_RETRY_MAX_S": "0.5",
}
#: Orders the minority worker gets while it is the only worker.
MINORITY_ALONE = 10
HEAL_AFTER_S = 2.0
#: "Everything resumes within a second or two of healing."
RECOVERY_BOUND_S = 2.0
#: How long the control scenario wipes the shared node.
CONTROL_S = 2.0
#: Leases each side's probe must get while partitioned, or the scenario did not bite.
MIN_PROBE_HOLDS = 5


@pytest.fixture
def links(stack: LocalStack) -> Iterator[list[Links]]:
    """Two groups of links (A and B) to the stack's three lock nodes, closed after the test."""
    groups = [Links(stack.lock_nodes), Links(stack.lock_nodes)]
    yield groups
    for group in groups:
        group.close()


@pytest.fixture
def probes(tmp_path: Path) -> Iterator[Probes]:
    """Probe processes on the HOT lock (none started yet); killed after the test."""
    spawned = Probes(tmp_path, ttl_ms=TTL_MS)
    yield spawned
    spawned.kill()


def test_asymmetric_partition_keeps_hot_leases_exclusive(
    stack: LocalStack,
    observer: Engine,
    links: list[Links],
    probes: Probes,
    reliability: Recorder,
) -> None:
    group_a, group_b = links
    sale = open_two_sided_sale(stack, observer, links, probes, WORKER_ENV, decided=0.1)
    cut_at, cut_s = now(), time.monotonic()
    group_a.partition([3])
    group_b.partition([1])
    reach = f"A reaches {group_a.reaches()}, B reaches {group_b.reaches()}"
    result = sale.finish()
    holds = probes.stop()
    healed_s = time.monotonic()
    group_a.heal()
    group_b.heal()
    overlapping = overlaps(holds)
    inversions = fence_inversions(holds)
    during = {g: granted_between(holds, g, cut_s, healed_s) for g in ("A", "B")}
    confirmed_during = decided_between(observer, ["confirmed"], cut_at)
    violations = fence_violations(observer)
    reliability.record(
        SCENARIO,
        "Asymmetric partition: worker group A reaches lock nodes {1, 2}, group B {2, 3}",
        result,
        notes=(
            f"{len(holds)} probe leases on HOT ({during['A']} by A and {during['B']} by B "
            f"while partitioned), {len(overlapping)} overlaps, {len(inversions)} fences out "
            f"of grant order; {confirmed_during} orders confirmed while partitioned"
        ),
        probe_leases=len(holds),
        probe_leases_partitioned=during,
        fenced_settlements=fenced_settlements(observer),
        probe_acquisitions_refused=probes.refused,
        overlaps=len(overlapping),
        fence_inversions=len(inversions),
        confirmed_while_partitioned=confirmed_during,
        fence_violations=len(violations),
        reasons=sale.reasons(),
    )
    assert reach == "A reaches [1, 2], B reaches [2, 3]"
    assert_sound(observer, sale.ids, result)
    assert overlapping == [], f"leases overlapped: {overlapping[:3]}"
    assert inversions == [], f"fences out of grant order: {inversions[:3]}"
    assert violations == []
    assert min(during.values()) >= MIN_PROBE_HOLDS, f"a side got no lease: {during}"
    assert confirmed_during > 0, "no order confirmed while partitioned: scenario did not bite"
    assert result.failed == 0, sale.reasons()


def test_minority_side_decides_nothing_on_its_own(
    stack: LocalStack,
    observer: Engine,
    links: list[Links],
    probes: Probes,
    reliability: Recorder,
) -> None:
    minority = links[0]
    sale = sale_of(stack, observer)
    [cut_worker] = sale.start_workers(1, env={**SHORT_BUDGET, **minority.env()}, loglevel="INFO")
    # After start-up: a worker refuses to start without a quorum of reachable nodes.
    minority.partition([2, 3])
    probes.start(minority.urls, "M1")  # a lock client on the minority side, next to the worker
    alone, later = sale.payloads[:MINORITY_ALONE], sale.payloads[MINORITY_ALONE:]
    alone_ids = sale.ids[:MINORITY_ALONE]
    sale.opened_s = time.monotonic()
    with producer(sale.broker_url) as app:
        enqueue(app, alone)
    wait_until(
        lambda: figures(observer, alone_ids).lost == 0,
        timeout_s=60,
        what="the minority worker's orders to end",
    )
    alone_outcomes = dict(
        scalar_rows(
            observer,
            "SELECT status::text || ':' || coalesce(reason, ''), count(*) FROM orders"
            f" WHERE id = {ANY_ID_SQL} GROUP BY 1",
            ids=alone_ids,
        )
    )
    retries_alone = log_lines([cut_worker], "not decided yet")
    sale.start_workers(1, env=SHORT_BUDGET)  # a worker with a quorum joins
    with producer(sale.broker_url) as app:
        enqueue(app, later)
    result = sale.finish()
    minority_holds = probes.stop()
    minority.heal()
    reasons = sale.reasons()
    violations = fence_violations(observer)
    retries = log_lines([cut_worker], "not decided yet")
    gave_up = log_lines([cut_worker], "failed after")
    reliability.record(
        SCENARIO,
        "Minority side: one worker cut from lock nodes 2 and 3 (reaches node 1 only)",
        result,
        notes=(
            f"alone, its {MINORITY_ALONE} orders: "
            + ", ".join(f"{n} {key.rstrip(':')}" for key, n in sorted(alone_outcomes.items()))
            + f" after {retries_alone} retries; with a worker on the majority side, "
            f"{result.failed - alone_outcomes.get('failed:lock_unavailable', 0)} more failed; "
            f"a lock client on its side: {len(minority_holds)} leases, "
            f"{probes.refused.get('M1', 0)} acquisitions refused"
        ),
        alone_outcomes=alone_outcomes,
        minority_probe_leases=len(minority_holds),
        minority_probe_acquisitions_refused=probes.refused.get("M1", 0),
        fenced_settlements=fenced_settlements(observer),
        retries_logged_by_cut_worker=retries,
        failures_logged_by_cut_worker=gave_up,
        fence_violations=len(violations),
        reasons=reasons,
    )
    assert alone_outcomes == {"failed:lock_unavailable": MINORITY_ALONE}, alone_outcomes
    assert minority_holds == [], "a lock client on the minority side got a lease"
    assert probes.refused["M1"] > 0
    assert retries_alone >= MINORITY_ALONE * int(SHORT_BUDGET["ORDER_MAX_RETRIES"])
    assert_sound(observer, sale.ids, result)
    assert violations == []
    assert {key for key in reasons if key.startswith("failed:")} == {"failed:lock_unavailable"}
    assert result.confirmed > 0


def test_everything_resumes_soon_after_the_partition_heals(
    stack: LocalStack,
    observer: Engine,
    links: list[Links],
    probes: Probes,
    reliability: Recorder,
) -> None:
    group_a, group_b = links
    sale = open_two_sided_sale(stack, observer, links, probes, PATIENT_BUDGET, decided=0.2)
    # Node 2 is cut from everyone, A reaches only node 1 and B only node 3: no quorum.
    cut_at, cut_s = now(), time.monotonic()
    group_a.partition([2, 3])
    group_b.partition([1, 2])
    time.sleep(HEAL_AFTER_S)
    healed_at, healed_s = now(), time.monotonic()
    group_a.heal()
    group_b.heal()
    result = sale.finish()
    holds = probes.stop()
    first = first_decided_after(observer, healed_at)
    recovery_s = (first - healed_at).total_seconds() if first else float("inf")
    all_decided_s = (last_decided(observer, sale.ids) - healed_at).total_seconds()
    first_probe_s = min((h.granted_s for h in holds if h.granted_s >= healed_s), default=None)
    probe_recovery_s = first_probe_s - healed_s if first_probe_s else float("inf")
    ttl = timedelta(milliseconds=TTL_MS)
    # Leases granted before the cut stay valid up to their TTL; after that, nothing.
    decided_while_cut = decided_between(
        observer, ["confirmed", "rejected"], cut_at + ttl + timedelta(seconds=0.5), healed_at
    )
    probe_leases_while_cut = granted_between(holds, "", cut_s + TTL_MS / 1000, healed_s)
    decided_first_s = decided_between(
        observer, ["confirmed", "rejected"], healed_at, healed_at + timedelta(seconds=1)
    )
    overlapping = overlaps(holds)
    inversions = fence_inversions(holds)
    reasons = sale.reasons()
    violations = fence_violations(observer)
    reliability.record(
        SCENARIO,
        f"Heal: no group reaches a quorum for {HEAL_AFTER_S:.0f} s, then every link heals",
        result,
        notes=(
            f"first order decided {recovery_s:.2f} s after the heal ({decided_first_s} in "
            f"the first second), first probe lease after {probe_recovery_s:.2f} s, every "
            f"order decided {all_decided_s:.1f} s after the heal; {decided_while_cut} orders "
            f"and {probe_leases_while_cut} probe leases while cut; {len(holds)} probe leases, "
            f"{len(overlapping)} overlaps, {len(inversions)} fences out of grant order"
        ),
        recovery_s=round(recovery_s, 2),
        probe_recovery_s=round(probe_recovery_s, 2),
        all_decided_after_heal_s=round(all_decided_s, 1),
        decided_first_second_after_heal=decided_first_s,
        decided_while_cut=decided_while_cut,
        probe_leases=len(holds),
        probe_leases_while_cut=probe_leases_while_cut,
        overlaps=len(overlapping),
        fence_inversions=len(inversions),
        fenced_settlements=fenced_settlements(observer),
        fence_violations=len(violations),
        reasons=reasons,
    )
    assert_sound(observer, sale.ids, result)
    assert decided_while_cut == 0
    assert probe_leases_while_cut == 0
    assert overlapping == [], f"leases overlapped: {overlapping[:3]}"
    assert inversions == [], f"fences out of grant order: {inversions[:3]}"
    assert violations == []
    assert recovery_s < RECOVERY_BOUND_S, f"first decision {recovery_s:.2f} s after the heal"
    assert probe_recovery_s < RECOVERY_BOUND_S, f"first lease {probe_recovery_s:.2f} s after"
    assert result.failed == 0, reasons


def test_the_lease_check_catches_real_overlaps_when_the_shared_node_forgets(
    stack: LocalStack, links: list[Links], tmp_path: Path, reliability: Recorder
) -> None:
    """Control: the same probes and check, with node 2 (the only node A and B share) wiped.

    Without node 2's memory, A's {1, 2} and B's {2, 3} majorities no longer
    intersect in a node that remembers the lease: the check must see overlaps. The
    probes take unfenced leases here: a fenced acquire is refused while node 2 has
    no fencing status and a third node cannot be read (`locking.fencing`), which
    would leave almost nothing to check.
    """
    group_a, group_b = links
    group_a.partition([3])
    group_b.partition([1])
    control = Probes(tmp_path, ttl_ms=TTL_MS, hold_s=0.1, pause_s=0.01, fenced=False)
    wiped = 0
    try:
        control.start(group_a.urls, "A1")
        control.start(group_b.urls, "B1")
        with redis.Redis(host="127.0.0.1", port=stack.lock_nodes[1].port) as node_2:
            deadline_s = time.monotonic() + CONTROL_S
            while time.monotonic() < deadline_s:
                node_2.flushall()
                wiped += 1
                time.sleep(0.03)
        holds = control.stop()
    finally:
        control.kill()
    overlapping = overlaps(holds)
    reliability.record(
        SCENARIO,
        f"Control: node 2, shared by A {{1, 2}} and B {{2, 3}}, wiped every 30 ms for "
        f"{CONTROL_S:.0f} s",
        notes=(
            f"{len(holds)} unfenced probe leases, {len(overlapping)} overlaps found: "
            "the check sees a broken lock"
        ),
        probe_leases=len(holds),
        overlaps=len(overlapping),
        wipes=wiped,
    )
    assert overlapping, f"no overlap found in {len(holds)} leases with node 2 wiped"
