"""The lock's nodes and the one round it makes over them, safe to share between threads.

Node connections are not thread-safe and a keep-alive thread shares them with
the caller, so every round runs under one I/O lock. A forked child gets fresh
I/O locks: a thread of the parent may have held one at fork time, and it does
not exist in the child (the connections themselves reopen on first use there,
`Node.send` compares the pid).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Sequence

from locking.address import NodeAddress
from locking.fanout import Suspects, fan_out
from locking.health import NodeHealth
from locking.node import Node
from locking.timing import quorum


class NodeSet:
    """The configured lock nodes, in a fixed order, with their quorum.

    :param addresses: the nodes.
    :param connect_timeout_s: bound on connecting to one node, lookup and login included.
    :param suspect_s: how long a node that timed out, refused or did not resolve is
        skipped by acquisitions.
    :param read_timeout_s: bound on waiting for the replies of one round.
    :param health: per node, its shared state (logging, error callback); another
        node set over the same nodes passes the same objects.
    """

    def __init__(
        self,
        addresses: Sequence[NodeAddress],
        *,
        connect_timeout_s: float,
        suspect_s: float,
        read_timeout_s: float,
        health: Sequence[NodeHealth] | None = None,
    ) -> None:
        health = health or [NodeHealth(address.name) for address in addresses]
        self._nodes = [
            Node(address, connect_timeout_s=connect_timeout_s, suspect_s=suspect_s, health=state)
            for address, state in zip(addresses, health, strict=True)
        ]
        self.quorum = quorum(len(self._nodes))
        self._read_timeout_s = read_timeout_s
        self.io_lock = threading.Lock()
        _INSTANCES.add(self)

    @property
    def health(self) -> list[NodeHealth]:
        """Per node, its shared state."""
        return [node.health for node in self._nodes]

    @property
    def names(self) -> list[str]:
        """The ``host:port`` of every node."""
        return [node.name for node in self._nodes]

    def suspects(self) -> list[bool]:
        """Per node, whether it is skipped after a recent timeout."""
        now = time.monotonic()
        return [node.is_suspect(now) for node in self._nodes]

    def round(
        self, payload: bytes, suspects: Suspects, *, await_replies: bool = True
    ) -> list[object]:
        """Send ``payload`` to every node and return one reply (or `NodeError`) each."""
        with self.io_lock:
            if suspects is Suspects.SKIP and self.suspects().count(False) < self.quorum:
                # Skipping would lose the round before it starts, for the whole
                # suspicion window, even if the nodes were only briefly late (a
                # loaded host): ask them again, at the cost of one read timeout.
                suspects = Suspects.AWAIT
            return fan_out(
                self._nodes,
                payload,
                read_timeout_s=self._read_timeout_s,
                suspects=suspects,
                await_replies=await_replies,
            )

    def ask(self, index: int, payload: bytes) -> object:
        """Send ``payload`` to the node at ``index`` alone; return its reply or `NodeError`.

        The reply is due within the read timeout after the request left.
        """
        with self.io_lock:
            node = self._nodes[index]
            error = node.send(payload)
            if error is not None:
                return error
            return node.read(time.monotonic() + self._read_timeout_s)

    def ask_one(self, payload: bytes, *, reply_within_s: float, skip: Sequence[bool]) -> object:
        """Send ``payload`` to the first node not skipped that takes it; return its reply.

        For commands that block their connection (a wait for a release): one node is
        enough. Returns None when no node took the request.

        :param reply_within_s: seconds after the request left (after connecting, if
            it had to) within which the node must answer.
        :param skip: per node, whether the caller distrusts it now.
        """
        with self.io_lock:
            now = time.monotonic()
            for node, skipped in zip(self._nodes, skip, strict=True):
                if skipped or node.is_suspect(now):
                    continue
                node.drop_if_owed()  # an earlier wait may still block it
                if node.send(payload) is None:
                    # The deadline starts once the request left: a connection made by
                    # this send (up to the connect timeout) does not shorten the wait.
                    deadline_s = time.monotonic() + reply_within_s
                    try:
                        # A blocked wait: spinning would only take the core from the
                        # process whose release ends it.
                        return node.read(deadline_s, spin=False)
                    except BaseException:
                        node.close()  # the blocked command goes with its connection
                        raise
        return None

    def wait_one(
        self, payload: bytes, *, resume: bytes, until_s: float, skip: Sequence[bool]
    ) -> object:
        """Wait on the first node not skipped for the reply to a blocking command (`Node.wait`).

        Returns the reply or a `NodeError`; None when no reply came by ``until_s`` (a
        ``time.monotonic()`` value) or no node took the command.

        :param resume: identifies the command, so that one an earlier call left
            blocked on that node is waited on again instead of sent twice.
        :param skip: per node, whether the caller distrusts it now.
        """
        with self.io_lock:
            now = time.monotonic()
            for node, skipped in zip(self._nodes, skip, strict=True):
                if skipped or node.is_suspect(now):
                    continue
                try:
                    return node.wait(payload, resume=resume, until=until_s)
                except BaseException:
                    node.close()  # the blocked command goes with its connection
                    raise
        return None

    def close(self) -> None:
        """Close every connection (they reopen on next use)."""
        with self.io_lock:
            for node in self._nodes:
                node.close()


#: Every live node set, so that a forked child can reset their I/O locks.
_INSTANCES: weakref.WeakSet[NodeSet] = weakref.WeakSet()


def _reset_io_locks_in_child() -> None:
    for instance in list(_INSTANCES):
        instance.io_lock = threading.Lock()
        for state in instance.health:
            state.reset_after_fork()


os.register_at_fork(after_in_child=_reset_io_locks_in_child)
