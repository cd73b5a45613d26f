"""Auto-extension of a lease for long critical sections, with a loud lost signal."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from locking.errors import LeaseLost, LockError
from locking.lease import Lease

logger = logging.getLogger(__name__)


class KeepAlive:
    """Extends one lease every third of its TTL until stopped or until it fails.

    On failure the lease is marked lost: ``lease.lost`` is set (an event the holder
    can wait on) and ``lease.check()`` raises from then on.

    :param lease: the lease to keep alive.
    :param extend: extends ``lease`` once (e.g. ``lambda: redlock.extend(lease)``);
        a `LockError` it raises stops the keep-alive and marks the lease lost.
    """

    def __init__(self, lease: Lease, extend: Callable[[], object]) -> None:
        self._lease = lease
        self._extend = extend
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"redlock-keepalive-{lease.token[:8]}", daemon=True
        )

    def start(self) -> None:
        """Start extending in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop extending and wait for the thread to finish its current round."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        lease = self._lease
        interval_s = lease.ttl_ms / 3000.0
        while not self._stopped.wait(interval_s):
            try:
                self._extend()
            except LockError as error:
                # A missed quorum already marked the lease lost, but the extension limit
                # does not (a caller extending by hand may still use the lease until it
                # lapses): the holder relies on this thread, so tell it now, and loudly.
                lease.mark_lost(error.reason if isinstance(error, LeaseLost) else str(error))
                logger.error("Auto-extension of lease %r stopped: %s", lease.token[:8], error)
                return
