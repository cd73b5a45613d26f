"""Whether one lock node answers, shared by every connection to it.

Each change of state is logged once and every error is reported to the lock's
``on_node_error`` callback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from locking.errors import NodeError

# Not __name__: "locking.node" is the logger the README tells operators to watch for
# node state changes; it was this class's module before it moved here.
logger = logging.getLogger("locking.node")


class NodeHealth:
    """Whether one node answers; each change is logged once and every error reported.

    Shared by every connection to the node (the lock's and the waits'), so a state
    change is logged once whichever connection saw it.

    :param name: the node's display name (``host:port``, never the password).
    :param on_error: called with every `NodeError` met while contacting the node;
        an exception it raises is logged and swallowed.
    """

    def __init__(self, name: str, on_error: Callable[[NodeError], None] | None = None) -> None:
        self.name = name
        self._on_error = on_error
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """True from an error until the node's next timely answer."""
        return self._down

    def failed(self, error: NodeError) -> None:
        """Record an error: log the first one of an outage, report every one."""
        with self._lock:
            changed, self._down = not self._down, True
        if changed:
            logger.warning("Lock node %r is down (%s): %s", self.name, error.kind, error.reason)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception("The lock's on_node_error callback failed for %r.", self.name)

    def answered(self) -> None:
        """Record a timely answer: log the end of an outage."""
        if not self._down:
            return
        with self._lock:
            changed, self._down = self._down, False
        if changed:
            logger.info("Lock node %r is up again.", self.name)

    def reset_after_fork(self) -> None:
        """Give a forked child a fresh lock (a parent thread may have held this one)."""
        self._lock = threading.Lock()
