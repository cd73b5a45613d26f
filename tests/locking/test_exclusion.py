"""Mutual exclusion between processes, and no deadlock between multi-resource leases."""

from __future__ import annotations

import itertools

import pytest
import redis

from tests.locking import _procs
from worker.demo.redis_server import RedisServer

pytestmark = pytest.mark.slow


def test_processes_hammering_one_key_never_overlap_nor_lose_an_update(
    node_urls: list[str], scratch: RedisServer, scratch_client: redis.Redis
) -> None:
    workers, iterations = 8, 25
    _procs.run_processes(
        _procs.exclusion_worker,
        [(node_urls, scratch.port, w, workers, iterations, 0.002) for w in range(workers)],
        timeout_s=90,
    )
    assert int(scratch_client.get("overlaps") or 0) == 0
    # A non-atomic GET, sleep, SET of a shared counter lost no increment.
    assert int(scratch_client.get("counter") or 0) == workers * iterations
    holders = [int(value) for value in scratch_client.lrange("holders", 0, -1)]
    assert sorted(set(holders)) == list(range(workers))
    assert all(holders.count(w) == iterations for w in range(workers))
    # They interleaved: the lock really passed from process to process.
    handovers = sum(1 for a, b in itertools.pairwise(holders) if a != b)
    assert handovers >= workers - 1


def test_opposite_resource_orders_do_not_deadlock(
    node_urls: list[str], scratch: RedisServer, scratch_client: redis.Redis
) -> None:
    iterations = 60
    orders = [["a", "b"], ["b", "a"], ["b", "a"], ["a", "b"]]
    _procs.run_processes(
        _procs.multi_resource_worker,
        [
            (node_urls, scratch.port, w, len(orders), order, iterations)
            for w, order in enumerate(orders)
        ],
        timeout_s=60,  # bounded progress: a deadlock (or livelock) would hang here
    )
    progress = {int(k): int(v) for k, v in scratch_client.hgetall("progress").items()}
    assert progress == dict.fromkeys(range(len(orders)), iterations)
    assert int(scratch_client.get("overlaps") or 0) == 0
