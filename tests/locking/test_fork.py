"""Fork safety: a Redlock used before a fork works in parent and child, on separate connections."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from locking import Redlock, ReleaseOutcome
from tests.locking._support import MakeRedlock
from tests.spawners import freeze_server, thaw_server
from worker.demo.redis_server import RedisServer

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python >= 3.12 warns when forking with threads alive; forking while the lock's
    # keep-alive thread runs is exactly what the second test is about.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

FORK = multiprocessing.get_context("fork")
CYCLES = 300


def connections_received(clients: list[redis.Redis]) -> list[int]:
    return [int(client.info("stats")["total_connections_received"]) for client in clients]


def cycle(redlock: Redlock, resource: str, count: int) -> None:
    """Acquire and release ``count`` times, checking every answer."""
    for _ in range(count):
        lease = redlock.acquire(resource, ttl_ms=5000)
        if redlock.release(lease) is not ReleaseOutcome.RELEASED:
            raise AssertionError(f"{resource}: lease not released cleanly")


def child_cycles(redlock: Redlock, resource: str, count: int) -> None:
    cycle(redlock, resource, count)
    redlock.close()


@contextlib.contextmanager
def forked(
    target: Callable[..., object], *args: object
) -> Iterator[multiprocessing.process.BaseProcess]:
    process = FORK.Process(target=target, args=args)
    process.start()
    try:
        yield process
    finally:
        process.join(5)  # the test body has joined it already, with its own bound
        if process.is_alive():
            process.kill()
            process.join()
        process.close()


def test_parent_and_forked_child_use_their_own_connections(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    cycle(redlock, "parent", 5)  # connected before the fork
    before = connections_received(clients)
    with forked(child_cycles, redlock, "child", CYCLES) as child:
        cycle(redlock, "parent", CYCLES)  # at the same time as the child
        child.join(30)
        assert child.exitcode == 0
    cycle(redlock, "parent", 5)
    # The child opened exactly one connection per node; the parent kept its own.
    assert [a - b for a, b in zip(connections_received(clients), before, strict=True)] == [1] * 3
    assert [client.keys("redlock:*") for client in clients] == [[], [], []]


def test_a_child_forked_while_a_keepalive_round_is_in_flight_does_not_hang(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer]
) -> None:
    """The parent's keep-alive thread holds the I/O lock while it waits on a frozen node;
    it does not exist in the child, which must not inherit the lock held."""
    redlock = make_redlock(read_timeout_ms=600, suspect_ms=1)
    cycle(redlock, "warm", 1)  # connected: the frozen node then costs a read timeout
    freeze_server(lock_nodes[2])
    try:
        with redlock.lock("kept", ttl_ms=3000, auto_extend=True):
            # Extensions run every second and each waits 600 ms for the frozen node:
            # 1.3 s after the grant, the keep-alive thread is inside its first round.
            time.sleep(1.3)
            with forked(child_cycles, redlock, "child", 3) as child:
                child.join(10)
                assert child.exitcode == 0, "the child could not use the lock"
    finally:
        thaw_server(lock_nodes[2])
