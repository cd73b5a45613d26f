"""Waiting for a release: the wake-up a release leaves, blocked on with BLPOP on one node.

Used by `Redlock.wait_released` (a caller's own wait loop) and by `Redlock.acquire`,
whose backoff between attempts is such a wait: a release ends it at once, instead
of the lock staying free until the waiter's jittered sleep runs out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from locking.commands import Commands
from locking.errors import NodeError
from locking.nodeset import NodeSet

logger = logging.getLogger(__name__)

#: Extra time a wait for a release gives the node to answer its timeout: Redis checks
#: blocked clients' timeouts on its timer, once per server tick (1000 / hz ms, 100 ms
#: with the default hz 10), so a BLPOP that simply times out is answered up to a tick
#: late. Without this slack such a late nil reply was taken for a silent node (3 of 20
#: unwoken 20 ms waits on an idle machine were reported as node timeouts).
WAIT_REPLY_SLACK_MS = 150
#: How soon after its release of a resource an acquire of it gives way to a waiter;
#: later, the lock is not raced for right after a release.
GIVE_WAY_S = 0.005


class Waits:
    """The lock's waits for releases, on connections of their own (a wait blocks one).

    :param nodes: the wait connections, one per lock node.
    :param commands: the lock's payload builder (its wake-up prefix).
    :param read_timeout_s: bound on a node's answer beyond the wait itself.
    :param clock: the lock's clock in seconds.
    :param sleep: sleep function in seconds (when no node can take a wait).
    """

    def __init__(
        self,
        nodes: NodeSet,
        commands: Commands,
        *,
        read_timeout_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self._nodes = nodes
        self._commands = commands
        self._read_timeout_s = read_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._refused = False  # a node's ACL refused a backoff wait: sleep from then on
        # The resources of this lock's last acquisition if it had to wait for them.
        self._waited_for: tuple[str, ...] | None = None
        # The resources of this lock's last release when it had waited for them and a
        # waiter had taken a wake-up, and when (time.monotonic()): the next acquire of
        # them gives way (`give_way`).
        self._handed_over: tuple[tuple[str, ...], float] | None = None

    def wait_released(
        self, names: Sequence[str], *, timeout_ms: float, skip: Sequence[bool]
    ) -> bool:
        """Block until a release of ``names`` wakes this caller (True) or ``timeout_ms``
        passes (False); see `Redlock.wait_released`.

        :param skip: per node, whether the lock distrusts it now.
        """
        started_s = self._clock()
        reply = self._nodes.ask_one(
            self._commands.wait_released(names, timeout_ms),
            reply_within_s=(timeout_ms + WAIT_REPLY_SLACK_MS) / 1000 + self._read_timeout_s,
            skip=skip,
        )
        if isinstance(reply, list):
            return True
        # Node trouble must not turn a caller's wait loop into a busy loop.
        left_s = timeout_ms / 1000 - (self._clock() - started_s)
        if left_s > 0:
            self._sleep(left_s)
        return False

    def back_off(self, names: Sequence[str], delay_s: float, *, skip: Sequence[bool]) -> bool:
        """Wait ``delay_s`` at most, ended early by a release of ``names``; True if woken.

        The wait is cut at ``delay_s`` on this side: a node answers a BLPOP's own
        timeout up to a server tick late when it is otherwise idle (100 ms with the
        default hz 10, whatever the timeout; about on time on a node that serves
        other commands), which would stretch every backoff
        (tests/locking/test_acquire_wakes.py checks that it does not). The BLPOP then
        stays blocked on its node and the next backoff of the same resources waits
        on it again (`Node.wait`); a release it catches meanwhile is not lost, it
        wakes that next backoff. Its own timeout is 1 ms shorter than the backoff,
        so that on a busy node it has usually ended when the next attempt is sent:
        a BLPOP of this caller still blocked when it later releases the lock would
        take the wake-up that release leaves for the other waiters.

        :param delay_s: the backoff's sleep, in seconds.
        :param skip: per node, whether the lock distrusts it now.
        """
        started_s = time.monotonic()
        if not self._refused and delay_s >= 0.001:  # BLPOP's own timeout is >= 1 ms
            payload = self._commands.wait_released(names, delay_s * 1000 - 1)
            reply = self._nodes.wait_one(
                payload,
                resume=self._commands.wait_keys(names),
                until_s=started_s + delay_s,
                skip=skip,
            )
            if isinstance(reply, list):
                return True
            if isinstance(reply, NodeError) and reply.kind == "auth":
                # An ACL written before the wake-up lists (no ~redlock-wake:*): the
                # releases push no wake-ups there either, so plain sleeps lose nothing.
                logger.warning(
                    "Lock node %r refused a wait for a release (%s): backoffs sleep "
                    "instead of waiting for releases.",
                    reply.node,
                    reply.reason,
                )
                self._refused = True
        left_s = delay_s - (time.monotonic() - started_s)
        if left_s > 0:
            self._sleep(left_s)
        return False

    def note_acquired(self, names: tuple[str, ...], *, waited: bool) -> None:
        """Remember whether the acquisition of ``names`` had to wait (or give way)."""
        self._waited_for = names if waited else None

    def note_release(self, names: tuple[str, ...], *, taken: bool) -> None:
        """Remember a release of ``names`` whose nodes said a waiter took a wake-up."""
        handed = taken and self._waited_for == names
        self._handed_over = (names, time.monotonic()) if handed else None

    def give_way(
        self, names: tuple[str, ...], wait_s: float, *, skip: Callable[[], Sequence[bool]]
    ) -> bool:
        """Before acquiring ``names`` again right after releasing them while others
        waited, wait for a release (at most ``wait_s``) instead of racing the waiter
        that release woke; True if it did.

        Without it the releaser, already running, usually wins that race: the woken
        waiter's attempt fails (or splits the votes, and both retry), the wake-up is
        spent, and the lock stays with the releaser (in an exploratory run with 8
        processes on one key, not a recorded benchmark, there were about 1.3
        wake-ups per acquisition and 3-4 attempts). The wait ends at once when nobody took
        this lock's own release's wake-up (a BLPOP that finds it), so it costs one
        round trip to one node when nobody was waiting after all. Only a lock that
        had to wait for its lease gives way: "taken" also means a wake-up that
        expired, and a holder that never waited would pay that round trip for
        nothing; among waiters taking turns every holder had waited.

        :param wait_s: the longest wait, in seconds (the policy's backoff cap).
        :param skip: returns, per node, whether the lock distrusts it now.
        """
        handed = self._handed_over
        self._handed_over = None
        if handed is None or handed[0] != names or time.monotonic() - handed[1] > GIVE_WAY_S:
            return False
        self.back_off(names, wait_s, skip=skip())
        return True
