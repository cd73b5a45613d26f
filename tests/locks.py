"""Reading and planting Redlock keys directly on the lock nodes, as a foreign holder would."""

from __future__ import annotations

import redis

from worker.demo.redis_server import RedisServer


def lock_key(sku: str) -> str:
    """The Redlock key the order worker takes for ``sku``."""
    return f"redlock:sku:{sku}"


def lock_values(nodes: list[RedisServer], sku: str) -> list[bytes | None]:
    """The token holding the SKU's lock on each node (None where nobody holds it)."""
    values = []
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            values.append(client.get(lock_key(sku)))
    return values


def lock_fences(nodes: list[RedisServer], sku: str) -> list[int]:
    """The fence counter of the SKU on each node (0 where none was written)."""
    counters = []
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            counters.append(int(client.get(f"redlock-fence:sku:{sku}") or 0))
    return counters


def hold_lock_elsewhere(nodes: list[RedisServer], sku: str, token: str) -> None:
    """Take the SKU's lock on every node for a foreign holder, for two minutes."""
    for node in nodes:
        with redis.Redis(port=node.port) as client:
            assert client.set(lock_key(sku), token, px=120_000, nx=True)
