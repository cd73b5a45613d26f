"""The worker main process's lock node probe: PING every node every few seconds.

It keeps ``flashsale_lock_node_up`` right when no order flows. It logs nothing
itself: its pings go through the lock library, which logs each node's state
change once (``locking.node``: WARNING down with the error, INFO up again), so a
second line here would double it. Its Redlock is its own (own connections, own
thread), so a probe never waits behind an order's lock round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

#: Probe period; the metric is at most this old (the issue asks for <= 5 s).
PROBE_INTERVAL_S = 2.0


class NodeProbe:
    """Ping every lock node in a daemon thread; report up/down to ``on_state``.

    :param ping: returns, per node name, None when it answered else its error
        (``Redlock.ping``).
    :param on_state: called with (node, up) after every probe of every node.
    :param interval_s: seconds between probes.
    """

    def __init__(
        self,
        ping: Callable[[], Mapping[str, object | None]],
        on_state: Callable[[str, bool], None],
        *,
        interval_s: float = PROBE_INTERVAL_S,
    ) -> None:
        self._ping = ping
        self._on_state = on_state
        self._interval_s = interval_s
        self._up: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe_once(self) -> dict[str, bool]:
        """Probe every node once; return node -> up."""
        try:
            replies = self._ping()
        except Exception:  # a probe must never kill the worker's main process
            logger.exception("Lock node probe failed")
            return dict(self._up)
        for node, error in replies.items():
            self._up[node] = error is None
            self._on_state(node, error is None)
        return dict(self._up)

    def start(self) -> None:
        """Probe now, then every ``interval_s`` in a daemon thread until `stop`."""
        self.probe_once()
        self._thread = threading.Thread(target=self._run, name="lock-node-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the probe thread (waits for a running probe to end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.probe_once()
