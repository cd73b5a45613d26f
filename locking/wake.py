"""Wake-up calls for lock waiters: block until a release instead of sleeping a backoff.

Every release leaves one wake-up per resource on each node (a one-element list,
kept `locking.commands.WAKE_TTL_MS`), which one blocked waiter takes, first come
first served. A wait blocks its connection, so waits get connections of their own,
one per node; a wait uses one node only, the first that is trusted and takes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from locking.address import NodeAddress
from locking.node import Node
from locking.nodeset import reset_after_fork


class ReleaseWaiter:
    """Blocks callers until a release wakes them, on connections of its own.

    :param addresses: the lock nodes, in the Redlock's order.
    :param connect_timeout_s: bound on connecting to one node, login included.
    :param suspect_s: how long a node whose wait timed out is not asked again.
    :param read_timeout_s: how long past the wait's own timeout a reply may take.
    :param sleep: sleep function in seconds, injectable for tests.
    """

    def __init__(
        self,
        addresses: Sequence[NodeAddress],
        *,
        connect_timeout_s: float,
        suspect_s: float,
        read_timeout_s: float,
        sleep: Callable[[float], None],
    ) -> None:
        self._nodes = [
            Node(address, connect_timeout_s=connect_timeout_s, suspect_s=suspect_s)
            for address in addresses
        ]
        self._read_timeout_s = read_timeout_s
        self._sleep = sleep
        self.io_lock = threading.Lock()
        reset_after_fork(self)

    def wait(self, payload: bytes, timeout_ms: float, *, suspects: Sequence[bool]) -> bool:
        """Send the BLPOP ``payload``; return True when a release answered it in time.

        :param timeout_ms: the wait's timeout, the one inside ``payload`` too.
        :param suspects: per node, whether the lock itself distrusts it now.
        """
        deadline_s = time.monotonic() + timeout_ms / 1000
        with self.io_lock:
            reply = self._do_wait(payload, deadline_s, suspects)
        if isinstance(reply, list):
            return True
        # Node trouble must not turn a caller's wait loop into a busy loop.
        left_s = deadline_s - time.monotonic()
        if left_s > 0:
            self._sleep(left_s)
        return False

    def close(self) -> None:
        """Close every wait connection (they reopen on next use)."""
        with self.io_lock:
            for node in self._nodes:
                node.close()

    def _do_wait(self, payload: bytes, deadline_s: float, suspects: Sequence[bool]) -> object:
        """Block on the first trusted node that takes the wait; return its reply or None."""
        now = time.monotonic()
        for node, suspect in zip(self._nodes, suspects, strict=True):
            if suspect or node.is_suspect(now):
                continue
            if node.send(payload) is None:
                return node.read(deadline_s + self._read_timeout_s)
        return None
