"""Scenario 4: a lock node restarted without persistence while leases are held.

A node restarted empty forgets the lease keys and the fence counters it held.
At the lock level this shows the hazard and both mitigations:

* one empty restart while the holder has all three nodes: still exclusive;
* two empty restarts (or one, when the holder had only two nodes): a second
  holder is admitted while the first lease is valid. After one restart its fence
  is still newer (the restarted node does not vouch for its counters, see
  `locking.fencing`), so the database guard refuses the first holder from then
  on; after two, the fence need not move forward: fencing relies on "one node
  loses its state at a time" too;
* restarting a crashed node only after the TTL: exclusive, even when a second
  node restarts empty meanwhile;
* AOF (``appendfsync always``): a SIGKILLed node comes back with the lease key
  and the fence counter.

End to end, a sale whose lock node restarts empty several times: whatever the
lock admits, the database guard keeps the ledger's fences ordered and nothing is
oversold (scenario 8 shows the guard refusing a stale holder outright).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis
from sqlalchemy import Engine

from locking import NO_RETRY, Lease, LockContended, NotAcquired, Redlock, RetryPolicy
from tests.chaos.figures import assert_sound, fence_violations
from tests.chaos.harness import FlashSale, log_lines
from tests.chaos.report import Recorder
from tests.spawners import kill_server, redis_servers
from worker.demo.redis_server import RedisServer
from worker.demo.stack import LocalStack

RESOURCE = "sku:restart"
KEY = f"redlock:{RESOURCE}"
COUNTER = f"redlock-fence:{RESOURCE}"
LONG_TTL_MS = 20_000
SHORT_TTL_MS = 2_000
#: Leases taken and released before the one under test, so its fence is > 1.
EARLIER_LEASES = 4
#: How often scenario 4's sale loses a lock node's memory.
EMPTY_RESTARTS = 3
SCENARIO = "4-node-restarted-empty"


@pytest.fixture
def aof_nodes() -> Iterator[list[RedisServer]]:
    """Three lock nodes that persist every write (AOF, fsync always)."""
    with redis_servers(3, appendonly=True) as servers:
        yield servers


@pytest.fixture
def clients(lock_nodes: list[RedisServer]) -> Iterator[list[Redlock]]:
    """Two independent lock clients (holder A and contender B) over the lock nodes."""
    yield from _clients(lock_nodes)


@pytest.fixture
def aof_clients(aof_nodes: list[RedisServer]) -> Iterator[list[Redlock]]:
    """Two lock clients over the AOF nodes."""
    yield from _clients(aof_nodes)


def _clients(nodes: list[RedisServer]) -> Iterator[list[Redlock]]:
    pair = [Redlock([node.url for node in nodes]) for _ in range(2)]
    yield pair
    for client in pair:
        client.close()


def restart_empty(node: RedisServer) -> None:
    """SIGKILL the node and start it again on its port (empty unless it has AOF)."""
    kill_server(node)
    node.start()


def hold(client: Redlock, ttl_ms: int = LONG_TTL_MS) -> Lease:
    """Take and release `EARLIER_LEASES` leases, then return a held fenced lease."""
    for _ in range(EARLIER_LEASES):
        client.release(client.acquire(RESOURCE, ttl_ms=ttl_ms, fence=True))
    return client.acquire(RESOURCE, ttl_ms=ttl_ms, fence=True)


def contend(client: Redlock, ttl_ms: int = LONG_TTL_MS) -> Lease:
    """One acquisition attempt, no retry."""
    return client.acquire(RESOURCE, ttl_ms=ttl_ms, fence=True, retry=NO_RETRY)


def outlive(lease: Lease) -> None:
    """Sleep past the lease's validity and its keys' TTL on the nodes."""
    time.sleep(max(lease.remaining_ms(), 0.0) / 1000 + 0.2)


def node_state(node: RedisServer) -> tuple[bytes | None, int, bytes | None]:
    """(lease token, its TTL in ms, fence counter) as the node holds them."""
    with redis.Redis(host="127.0.0.1", port=node.port) as client:
        return client.get(KEY), int(client.pttl(KEY)), client.get(COUNTER)


def test_one_empty_restart_keeps_a_full_lease_exclusive(
    lock_nodes: list[RedisServer], clients: list[Redlock], reliability: Recorder
) -> None:
    holder, contender = clients
    lease = hold(holder)
    restart_empty(lock_nodes[0])
    with pytest.raises(LockContended):
        contend(contender)
    reliability.record(
        SCENARIO,
        "Lock level: holder on 3 nodes, 1 node restarted empty",
        notes="contender refused (nodes 2 and 3 still hold the lease): exclusive",
    )
    assert lease.is_valid


def _restart_two(nodes: list[RedisServer], holder: Redlock) -> Lease:
    lease = hold(holder)
    restart_empty(nodes[0])
    restart_empty(nodes[1])
    return lease


def _restart_one_of_a_two_node_lease(nodes: list[RedisServer], holder: Redlock) -> Lease:
    # A stale key of someone else on node 3 expires just after the grant: the holder
    # gets nodes 1 and 2 only, a legal lease; then node 1 forgets it.
    for _ in range(EARLIER_LEASES):
        holder.release(holder.acquire(RESOURCE, ttl_ms=LONG_TTL_MS, fence=True))
    with redis.Redis(host="127.0.0.1", port=nodes[2].port) as third:
        third.set(KEY, "someone-else", px=300)
    lease = holder.acquire(RESOURCE, ttl_ms=LONG_TTL_MS, fence=True, retry=NO_RETRY)
    time.sleep(0.4)
    restart_empty(nodes[0])
    return lease


Breach = Callable[[list[RedisServer], Redlock], Lease]


@pytest.mark.parametrize(
    ("title", "breach", "fenced"),
    [
        pytest.param("2 of 3 nodes restarted empty", _restart_two, False, id="two-nodes"),
        pytest.param(
            "holder on 2 nodes, 1 of them restarted empty",
            _restart_one_of_a_two_node_lease,
            True,
            id="one-node-of-a-two-node-lease",
        ),
    ],
)
def test_empty_restarts_admit_a_second_holder(
    title: str,
    breach: Breach,
    fenced: bool,
    lock_nodes: list[RedisServer],
    clients: list[Redlock],
    reliability: Recorder,
) -> None:
    """``fenced``: one node lost its state, so the second fence must be newer."""
    holder, contender = clients
    first = breach(lock_nodes, holder)
    second = contend(contender)
    both_valid = first.is_valid and second.is_valid
    assert second.fence is not None and first.fence is not None
    if fenced:
        outcome = "the fence guard refuses the first holder from then on"
    elif second.fence <= first.fence:
        outcome = "no newer fence: only the database's stock guard is left (scenario 8)"
    else:
        outcome = "newer only because the third node kept it: not guaranteed"
    reliability.record(
        SCENARIO,
        f"Lock level (hazard): {title}",
        notes=(
            f"second holder admitted while the first is valid; fences {first.fence} then "
            f"{second.fence}: {outcome}"
        ),
        first_fence=first.fence,
        second_fence=second.fence,
    )
    assert both_valid, "the hazard did not show: a second holder was not admitted"
    if fenced:
        assert second.fence > first.fence


def test_restart_delayed_past_the_ttl_keeps_exclusion(
    lock_nodes: list[RedisServer], clients: list[Redlock], reliability: Recorder
) -> None:
    holder, contender = clients
    first = hold(holder, SHORT_TTL_MS)
    kill_server(lock_nodes[0])  # crashed, and kept down for longer than any lease's TTL
    restart_empty(lock_nodes[1])  # meanwhile a second node loses its memory
    refusals = 0
    while first.remaining_ms() > 100:
        with pytest.raises(NotAcquired):
            contend(contender, SHORT_TTL_MS)
        refusals += 1
        time.sleep(0.05)
    outlive(first)
    lock_nodes[0].start()
    # Two nodes came back without a fencing status: the fence can then only be read
    # from every node (locking.fencing), and node 0 is skipped for a second after its
    # refused connections, so the contender retries until every node answers.
    patient = RetryPolicy(attempts=1000, base_delay_ms=50.0, max_delay_ms=100.0, deadline_ms=5000)
    second = contender.acquire(RESOURCE, ttl_ms=SHORT_TTL_MS, fence=True, retry=patient)
    reliability.record(
        SCENARIO,
        "Lock level (mitigation): crashed node back after the TTL, another restarted empty",
        notes=(
            f"contender refused {refusals} times while the lease was valid; admitted only "
            f"after it lapsed, with fence {second.fence} > {first.fence}"
        ),
        refusals=refusals,
    )
    assert refusals > 0
    assert not first.is_valid
    assert first.fence is not None and second.fence is not None
    assert second.fence > first.fence


def test_aof_nodes_keep_the_lease_and_the_fence_across_sigkill(
    aof_nodes: list[RedisServer], aof_clients: list[Redlock], reliability: Recorder
) -> None:
    holder, contender = aof_clients
    first = hold(holder, SHORT_TTL_MS)
    restart_empty(aof_nodes[0])
    restart_empty(aof_nodes[1])
    states = [node_state(node) for node in aof_nodes[:2]]
    with pytest.raises(LockContended):
        contend(contender, SHORT_TTL_MS)
    outlive(first)
    second = contend(contender, SHORT_TTL_MS)
    reliability.record(
        SCENARIO,
        "Lock level (mitigation): AOF nodes, two SIGKILLed and restarted",
        notes=f"lease key and fence counter survived; next fence {second.fence} > {first.fence}",
    )
    for token, ttl_ms, counter in states:
        assert token == first.token.encode()
        assert 0 < ttl_ms <= SHORT_TTL_MS
        assert counter is not None and int(counter) == first.fence
    assert first.fence is not None and second.fence is not None
    assert second.fence > first.fence


def restart_repeatedly(node: RedisServer, sale: FlashSale) -> None:
    """Restart ``node`` empty `EMPTY_RESTARTS` times, spread over the sale."""
    for round_ in range(1, EMPTY_RESTARTS + 1):
        restart_empty(node)
        sale.wait_decided(0.25 + round_ * 0.15)


def test_sale_with_a_lock_node_restarted_empty_repeatedly(
    stack: LocalStack, observer: Engine, reliability: Recorder
) -> None:
    sale = FlashSale(stack, observer)
    result, _ = sale.run(lambda: restart_repeatedly(stack.lock_nodes[0], sale))
    violations = fence_violations(observer)
    stale = log_lines(stack.workers, "newer lease than fence")
    reliability.record(
        SCENARIO,
        f"Sale: one lock node SIGKILLed and restarted empty {EMPTY_RESTARTS} times",
        result,
        notes=f"{stale} settlements refused by the fence guard; ledger fences ordered",
        stale_fence_refusals=stale,
        fence_violations=len(violations),
        reasons=sale.reasons(),
    )
    assert_sound(observer, sale.ids, result)
    assert violations == []
