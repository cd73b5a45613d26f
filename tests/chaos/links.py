"""Network links of a worker group: one `TcpProxy` per (group, lock node) pair.

Every worker of a group is started with ``REDLOCK_NODES`` pointing at its
group's proxies, so a test can cut one group off some lock nodes while another
group still reaches them: different workers see different subsets of the nodes,
as in a real network partition. A group can also reach PostgreSQL through a
proxy of its own (`database_link`), to delay its writes past its lease.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from tests.tcp_proxy import TcpProxy
from worker.demo.redis_server import RedisServer


class Links:
    """One group's links to every lock node, numbered from 1 as in the scenarios.

    :param nodes: the stack's lock nodes, in order.
    """

    def __init__(self, nodes: Sequence[RedisServer]) -> None:
        self.proxies = [TcpProxy("127.0.0.1", node.port) for node in nodes]

    @property
    def urls(self) -> list[str]:
        """The lock-node URLs this group uses (its proxies)."""
        return [proxy.url("redis", "/0") for proxy in self.proxies]

    def env(self) -> dict[str, str]:
        """Worker environment that sends the group's lock traffic through its links."""
        return {"REDLOCK_NODES": ",".join(self.urls)}

    def partition(self, nodes: Iterable[int], *, refuse: bool = False) -> None:
        """Partition the links to ``nodes`` (1-based): bytes held, or connections reset."""
        for number in nodes:
            self.proxies[number - 1].partition(refuse=refuse)

    def reaches(self) -> list[int]:
        """The 1-based numbers of the nodes this group can talk to now."""
        return [n for n, proxy in enumerate(self.proxies, 1) if not proxy.partitioned]

    def heal(self) -> None:
        """Heal every link of the group (held bytes are delivered now)."""
        for proxy in self.proxies:
            proxy.heal()

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()


def database_link(url: str) -> tuple[TcpProxy, str]:
    """A proxy in front of the database of ``url``; return it and the URL through it."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port, f"database URL without host and port: {url}"
    proxy = TcpProxy(parts.hostname, parts.port)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{proxy.address}" if auth else proxy.address
    return proxy, urlunsplit(parts._replace(netloc=netloc))
