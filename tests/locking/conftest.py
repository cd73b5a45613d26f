"""Fixtures of the lock tests: Redlocks that are always closed, direct node clients, a scratch node.

Every test that is about the system talks to real redis-server processes; a direct
``redis.Redis`` client per node inspects what the lock left on each node.

`lock_nodes` is overridden here for speed: each test module starts three nodes
once, and before every test each node is made whole again (restarted on its port
if a test killed it, thawed if a test froze it), every other client connection is
killed and every key flushed. A test therefore still gets three running, empty,
independent nodes that nobody else is connected to, for ~5 ms instead of ~250 ms.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from locking import Redlock
from tests.locking._support import MakeRedlock
from worker.demo.redis_server import RedisServer, redis_servers


@pytest.fixture(scope="module")
def _node_pool() -> Iterator[list[RedisServer]]:
    with redis_servers(3) as servers:
        yield servers


@pytest.fixture
def lock_nodes(_node_pool: list[RedisServer]) -> list[RedisServer]:
    """Three running, empty, independent redis-server lock nodes on loopback ports."""
    for server in _node_pool:
        _make_whole(server)
    return _node_pool


def _make_whole(server: RedisServer) -> None:
    if server.process is not None and server.process.poll() is not None:
        server.stop()  # it died on its own: reap it, then start it again below
    if server.process is None:
        server.start()
    else:
        server.thaw()
    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)
    try:
        # Drop the connections of earlier tests first (with whatever they still had
        # queued), then their keys.
        client.client_kill_filter(_type="normal", skipme=True)
        client.flushall()
    finally:
        client.close()


@pytest.fixture
def make_redlock(node_urls: list[str]) -> Iterator[MakeRedlock]:
    """Build Redlocks (over the three lock nodes unless told otherwise); close them all after."""
    made: list[Redlock] = []

    def make(nodes: Sequence[Any] | None = None, **options: Any) -> Redlock:
        redlock = Redlock(node_urls if nodes is None else nodes, **options)
        made.append(redlock)
        return redlock

    yield make
    for redlock in made:
        redlock.close()


@pytest.fixture
def redlock(make_redlock: MakeRedlock) -> Redlock:
    """A Redlock with the default settings over the three lock nodes."""
    return make_redlock()


@pytest.fixture
def clients(lock_nodes: list[RedisServer]) -> Iterator[list[redis.Redis]]:
    """One direct client per lock node, in the order of `lock_nodes` / `node_urls`."""
    made = [redis.Redis(host="127.0.0.1", port=server.port) for server in lock_nodes]
    yield made
    for client in made:
        client.close()


@pytest.fixture
def scratch() -> Iterator[RedisServer]:
    """A fourth, unrelated redis-server: shared state of the processes under test."""
    with redis_servers(1) as servers:
        yield servers[0]


@pytest.fixture
def scratch_client(scratch: RedisServer) -> Iterator[redis.Redis]:
    """A client of the scratch server."""
    client = redis.Redis(host="127.0.0.1", port=scratch.port)
    yield client
    client.close()
