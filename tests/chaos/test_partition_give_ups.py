"""Scenario 10, lock level: a client that gave up acquisitions during a partition.

A client that gave up many acquisitions during a partition leaves no key behind
at the heal: each given-up acquire is followed on its connection by its release,
and a connection with too many replies owed is now closed before a send rather
than right after one, so here the held requests arrive in pairs (before, the
close could fall between an acquire and its release, which locked the resource
for one TTL after the heal). README says when a late grant can still linger.
"""

from __future__ import annotations

import time

import pytest

from locking import NO_RETRY, QuorumUnavailable, Redlock, RetryPolicy
from tests.chaos.links import Links
from tests.chaos.partition_probes import TTL_MS
from worker.demo.redis_server import RedisServer

#: Acquisitions a client gives up while cut from nodes 2 and 3: enough for its
#: connections to them to close with more than 64 replies owed (locking/node.py).
GIVE_UPS = 40
#: How soon after a heal a lock that nobody holds must be free again.
FREE_AFTER_HEAL_MS = 300.0


def test_a_client_that_gave_up_during_a_partition_leaves_no_key_behind(
    lock_nodes: list[RedisServer],
) -> None:
    links = Links(lock_nodes)
    redlock = Redlock(links.urls)
    try:
        redlock.release(redlock.acquire("sku:X", ttl_ms=TTL_MS))  # connections open
        links.partition([2, 3])
        for _ in range(GIVE_UPS):
            with pytest.raises(QuorumUnavailable):
                redlock.acquire("sku:X", ttl_ms=TTL_MS, fence=True, retry=NO_RETRY)
        links.heal()
        healed_s = time.monotonic()
        patient = RetryPolicy(attempts=10_000, max_delay_ms=10.0, deadline_ms=3 * TTL_MS)
        lease = redlock.acquire("sku:X", ttl_ms=TTL_MS, retry=patient)
        free_after_ms = (time.monotonic() - healed_s) * 1000
        redlock.release(lease)
    finally:
        redlock.close()
        links.close()
    assert free_after_ms < FREE_AFTER_HEAL_MS, f"lock free {free_after_ms:.0f} ms after the heal"
