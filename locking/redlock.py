"""Redlock over N independent Redis nodes, per the Redis distlock spec.

A lease is granted when a majority ``N // 2 + 1`` of the *configured* nodes set
every key of the lease to a fresh 128-bit token with ``NX`` and a TTL, and the
time left (TTL - elapsed - drift) is still positive. Every round sends to all
nodes before reading any reply (`locking.fanout`), waits for all of them (or
the read timeout), and never returns at quorum: a late grant is therefore never
left behind by a release, and a failed attempt releases on every node at once.
The release travels on the same connection as the late grant; when that
connection is closed first (more than `locking.node.MAX_OWED_REPLIES` owed
replies, or a node suspected after a timeout whose connection is gone, which a
release skips), the late grant lingers until its key expires: at most one TTL
after it lands, and it only blocks that one node.

Fencing tokens (``fence=True``) are explained in `locking.fencing`.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from locking.address import NodeSpec, lock_addresses
from locking.clock import lease_clock
from locking.commands import (
    Commands,
    fence_report,
    is_grant,
    refusal,
    release_outcome,
    resource_names,
)
from locking.errors import ConfigurationError, ExtensionLimitReached, LeaseLost, NodeError
from locking.fanout import Suspects
from locking.fence_rounds import commit_fence, decide_fence
from locking.health import NodeHealth
from locking.keepalive import KeepAlive
from locking.lease import Lease, ReleaseOutcome
from locking.nodeset import NodeSet
from locking.protocol import encode_command
from locking.repair import repair_node
from locking.timing import RetryPolicy, check_ttl, drift_ms, validity_ms
from locking.waiting import Waits

logger = logging.getLogger(__name__)
T = TypeVar("T")
_DEFAULT_RETRY = RetryPolicy()


class Redlock:
    """A distributed lock over independent Redis nodes.

    :param nodes: redis URLs (``redis://``, ``rediss://``, with user/password),
        `NodeAddress` objects or ``redis.Redis`` clients (only their address is used,
        see `locking.address.RedisClientLike`).
    :param key_prefix: prefix of the lock keys.
    :param fence_prefix: prefix of the fence counter keys.
    :param wake_prefix: prefix of the wake-up lists releases push to (`wait_released`).
    :param connect_timeout_ms: bound on connecting to one node, name lookup and login
        included.
    :param read_timeout_ms: bound on waiting for the replies of one round.
    :param suspect_ms: how long a node that timed out, refused the connection or did
        not resolve is skipped by acquisitions (not when that would leave fewer than
        a quorum of nodes to ask).
    :param retry: the default retry policy of `acquire`.
    :param max_extensions: how often one lease may be extended.
    :param allow_fewer_than_three: accept 1 or 2 nodes (development only: one
        node failing then loses the lock).
    :param clock: the validity clock in seconds (`locking.clock.lease_clock`: it counts
        time suspended), injectable for tests.
    :param sleep: sleep function in seconds, injectable for tests.
    :param rng: random source for backoff jitter.
    :param on_node_error: called with every `NodeError` a round met while contacting a
        node (not for nodes it skipped as suspect); must be cheap, and an exception it
        raises is logged and swallowed.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        *,
        key_prefix: str = "redlock:",
        fence_prefix: str = "redlock-fence:",
        wake_prefix: str = "redlock-wake:",
        connect_timeout_ms: float = 50.0,
        read_timeout_ms: float = 50.0,
        suspect_ms: float = 1000.0,
        retry: RetryPolicy = _DEFAULT_RETRY,
        max_extensions: int = 10,
        allow_fewer_than_three: bool = False,
        clock: Callable[[], float] = lease_clock,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_node_error: Callable[[NodeError], None] | None = None,
    ) -> None:
        addresses = lock_addresses(nodes, allow_fewer_than_three=allow_fewer_than_three)
        if min(connect_timeout_ms, read_timeout_ms) <= 0 or max_extensions < 0:
            raise ConfigurationError("timeouts must be positive and max_extensions >= 0")
        self._nodes = NodeSet(
            addresses,
            connect_timeout_s=connect_timeout_ms / 1000,
            suspect_s=suspect_ms / 1000,
            read_timeout_s=read_timeout_ms / 1000,
            health=[NodeHealth(address.name, on_node_error) for address in addresses],
        )
        self._quorum = self._nodes.quorum
        self._commands = Commands(
            key_prefix=key_prefix, fence_prefix=fence_prefix, wake_prefix=wake_prefix
        )
        # A wait for a release blocks its connection: waits get connections of their own.
        self._wait_nodes = NodeSet(
            addresses,
            connect_timeout_s=connect_timeout_ms / 1000,
            suspect_s=suspect_ms / 1000,
            read_timeout_s=read_timeout_ms / 1000,
            health=self._nodes.health,
        )
        self._waits = Waits(
            self._wait_nodes,
            self._commands,
            read_timeout_s=read_timeout_ms / 1000,
            clock=clock,
            sleep=sleep,
        )
        self._retry = retry
        self._max_extensions = max_extensions
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    @property
    def node_names(self) -> list[str]:
        """The ``host:port`` of every configured node."""
        return self._nodes.names

    @property
    def quorum(self) -> int:
        """How many nodes must agree for a grant."""
        return self._quorum

    def acquire(
        self,
        resources: str | Sequence[str],
        *,
        ttl_ms: int,
        fence: bool = False,
        retry: RetryPolicy | None = None,
    ) -> Lease:
        """Acquire one lease over every resource, retrying after a jittered backoff.

        With `RetryPolicy.wake_on_release`, while the lock is held elsewhere a
        backoff is a wait for its release, which ends it early (`locking.waiting`).

        :param resources: one resource name or several (all-or-nothing).
        :param ttl_ms: how long the nodes keep the lease, in milliseconds (an int
            larger than its drift, at most `locking.timing.MAX_TTL_MS`).
        :param fence: also issue a fencing token (one more round trip when the nodes'
            counters disagree, up to two for a resource's first lease after a node lost
            its state; see `locking.fencing`).
        :param retry: overrides the lock's default retry policy.
        :raises LockContended: another holder kept the lock on every attempt.
        :raises QuorumUnavailable: too many nodes failed on the last attempt.
        """
        names = resource_names(resources)
        check_ttl(ttl_ms)
        policy = retry or self._retry
        started_s = self._clock()
        replies: list[object] = []
        gave_way = (
            policy.wake_on_release
            and policy.attempts > 1
            and self._waits.give_way(names, policy.max_delay_ms / 1000, skip=self._nodes.suspects)
        )
        for attempt in range(1, policy.attempts + 1):
            outcome = self._attempt(names, ttl_ms=ttl_ms, fence=fence)
            if isinstance(outcome, Lease):
                self._waits.note_acquired(names, waited=gave_way or attempt > 1)
                return outcome
            replies = outcome
            delay_s = policy.delay_ms(attempt, self._rng) / 1000
            if policy.deadline_ms is not None:
                left_s = policy.deadline_ms / 1000 - (self._clock() - started_s)
                if left_s <= delay_s:
                    break
            if attempt < policy.attempts:  # not after node failures: may leave no wake-up
                failed = sum(1 for reply in replies if isinstance(reply, NodeError))
                if policy.wake_on_release and failed <= len(replies) - self._quorum:
                    self._waits.back_off(names, delay_s, skip=self._nodes.suspects())
                else:
                    self._sleep(delay_s)
        raise refusal(names, attempt, replies, fence=fence, quorum=self._quorum)

    def extend(self, lease: Lease, *, ttl_ms: int | None = None) -> Lease:
        """Push the lease's expiry ``ttl_ms`` (default: its TTL) into the future.

        Only nodes that still hold the token are extended; an expired key is never
        recreated. Without a quorum the lease is marked lost.

        :raises ValueError: ``ttl_ms`` is not an int larger than the drift and at most
            `locking.timing.MAX_TTL_MS`; the lease is left as it was, on the nodes too.
        :raises ExtensionLimitReached: the lease was extended ``max_extensions`` times.
        :raises LeaseLost: the lease expired or no quorum still held it.
        """
        ttl_ms = lease.ttl_ms if ttl_ms is None else ttl_ms
        check_ttl(ttl_ms)
        lease.check()
        if lease.extensions >= self._max_extensions:
            raise ExtensionLimitReached(
                resources=lease.resources, reason=f"extended {lease.extensions} times already"
            )
        started_s = self._clock()
        payload = self._commands.extend(lease.resources, lease.token, ttl_ms)
        replies = self._nodes.round(payload, Suspects.SKIP)
        confirmed = sum(1 for reply in replies if reply == 1)
        valid_ms = validity_ms(ttl_ms, (self._clock() - started_s) * 1000)
        if confirmed < self._quorum or valid_ms <= 0:
            reason = f"extension confirmed by {confirmed} of {len(replies)} nodes"
            lease.mark_lost(reason)
            raise LeaseLost(resources=lease.resources, reason=reason)
        lease.record_extension(
            ttl_ms=ttl_ms,
            validity_ms=valid_ms,
            valid_until_s=started_s + (ttl_ms - drift_ms(ttl_ms)) / 1000,
        )
        return lease

    def release(self, lease: Lease, *, confirm: bool = True, wakes: int = 1) -> ReleaseOutcome:
        """Delete the lease's keys on every node that still holds its token.

        Returns `ReleaseOutcome.EXPIRED` instead of raising when the lease had
        already lapsed; calling it again returns the first outcome.

        :param confirm: False to send the release and return `ReleaseOutcome.SENT`
            without waiting a round trip; the replies are read and dropped by the
            next round on the same connections. For hot paths that would only log
            the outcome: the lease stops being usable here either way.
        :param wakes: waiters to wake per resource (`wait_released`), at most
            `locking.commands.MAX_WAKES`."""
        payload = self._commands.release(lease.resources, lease.token, wakes)  # checks wakes
        if lease.release_outcome is not None:
            return lease.release_outcome
        if not confirm:
            self._nodes.round(payload, Suspects.SEND, await_replies=False)
            lease.release_outcome = ReleaseOutcome.SENT
            return ReleaseOutcome.SENT
        replies = self._nodes.round(payload, Suspects.SEND)
        outcome, taken = release_outcome(replies, keys=len(lease.resources), quorum=self._quorum)
        self._waits.note_release(lease.resources, taken=taken)
        lease.release_outcome = outcome
        return outcome

    @contextmanager
    def lock(
        self,
        resources: str | Sequence[str],
        *,
        ttl_ms: int,
        fence: bool = False,
        retry: RetryPolicy | None = None,
        auto_extend: bool = False,
    ) -> Iterator[Lease]:
        """Hold a lease for the ``with`` block and release it on the way out.

        :param auto_extend: extend in the background every ttl/3; if that fails the
            lease's ``lost`` event is set and ``lease.check()`` raises `LeaseLost`.
        """
        lease = self.acquire(resources, ttl_ms=ttl_ms, fence=fence, retry=retry)
        keepalive = KeepAlive(lease, lambda: self.extend(lease)) if auto_extend else None
        if keepalive is not None:
            keepalive.start()
        try:
            yield lease
        finally:
            if keepalive is not None:
                keepalive.stop()
            outcome = self.release(lease)
            if outcome is not ReleaseOutcome.RELEASED:
                logger.warning("Lease on %r ended %s at release.", lease.resources, outcome.value)

    def with_lock(self, resources: str | Sequence[str], ttl_ms: int, fn: Callable[[], T]) -> T:
        """Run ``fn()`` while holding a lease over ``resources`` and return its result."""
        with self.lock(resources, ttl_ms=ttl_ms):
            return fn()

    def advance_fence(self, resources: str | Sequence[str], at_least: int) -> int:
        """Raise the fence counters of ``resources`` to ``at_least`` on every node.

        For a guard that saw a fence higher than the lock issues (counters lost on
        a majority, e.g. nodes restarted empty): the next fenced lease then gets a
        fence above ``at_least``. Counters are never lowered, so this is always
        safe. Returns how many nodes confirmed; below the quorum, call it again.
        """
        names = resource_names(resources)
        payload = self._commands.advance_fence(names, at_least)
        return sum(1 for reply in self._nodes.round(payload, Suspects.SKIP) if reply == 1)

    def repair_node(self, name: str) -> int:
        """Make a node that lost its state vouch for its fence counters again.

        Reads every fence counter of every other node (SCAN), raises this node's
        counters to the highest value found (never lowers one) and then gives it the
        status ``trusted``. Afterwards the node holds at least every fence handed out
        before the reads, as if it had never lost its state, so another node may lose
        its state next (see `locking.fencing`). Every node must answer, and every
        other node must have a status (two nodes without one mean two losses: the
        counters a repair would read may be too low). Safe to run at any time and
        again: it only raises counters; a node that is ``trusted`` already is left
        alone. A node that loses its state during the repair makes it fail.

        :param name: the node's ``host:port`` (one of `node_names`).
        :returns: how many counters were raised.
        :raises ValueError: ``name`` is not a configured node.
        :raises FenceRepairFailed: a node did not answer, another node has no status,
            or the node lost its state (or another repair took over) meanwhile.
        """
        return repair_node(self._nodes, self._commands, name)

    def wait_released(self, resources: str | Sequence[str], *, timeout_ms: float) -> bool:
        """Block until a lease on any of ``resources`` is released, or ``timeout_ms`` passes.

        A wake-up call for waiters instead of sleeping through a backoff, not a grant:
        call `acquire` next. Every release leaves one wake-up per resource on each node
        it reaches where the resource is free afterwards, also on nodes the holder had
        skipped (a one-element list, kept `locking.commands.WAKE_TTL_MS`), which one
        blocked waiter takes, first come first served. This waits on one node, the first
        trusted one that takes the request; when none can, it sleeps the timeout
        instead. Returns True when woken by a release, False on timeout or node trouble.
        A node answers a wait that timed out up to one server tick late, so the node
        counts as late only `locking.waiting.WAIT_REPLY_SLACK_MS` plus the read timeout
        after ``timeout_ms``.

        :param timeout_ms: the longest wait, in milliseconds.
        """
        names = resource_names(resources)
        if not timeout_ms > 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms!r}")
        return self._waits.wait_released(names, timeout_ms=timeout_ms, skip=self._nodes.suspects())

    def ping(self) -> dict[str, NodeError | None]:
        """Return, per node name, None when it answers PING, else its error."""
        replies = self._nodes.round(encode_command(["PING"]), Suspects.AWAIT)
        return {
            name: reply if isinstance(reply, NodeError) else None
            for name, reply in zip(self._nodes.names, replies, strict=True)
        }

    def close(self) -> None:
        """Close every node connection (they reopen on next use)."""
        self._nodes.close()
        self._wait_nodes.close()

    def _attempt(self, names: tuple[str, ...], *, ttl_ms: int, fence: bool) -> Lease | list[object]:
        """Make one acquisition round; return the lease, or the replies that refused it."""
        token = secrets.token_hex(16)
        started_s = self._clock()
        replies = self._nodes.round(
            self._commands.acquire(names, token, ttl_ms, fence=fence), Suspects.SKIP
        )
        reports = [fence_report(reply) for reply in replies] if fence else []
        if fence:
            granting = [report is not None for report in reports]
        else:
            granting = [is_grant(reply, fence=False) for reply in replies]
        granted = sum(granting)
        fence_value: int | None = None
        committed = True
        if granted >= self._quorum and fence:
            decided = decide_fence(self._nodes, self._commands, names, reports, granting)
            if decided is None:
                committed = False  # the grants are released below; the next attempt may tell
            else:
                fence_value = decided.fence
                if decided.write_back:
                    # A failed write-back still leaves the grants on the nodes: released below.
                    committed = commit_fence(self._nodes, self._commands, names, token, decided)
        valid_ms = validity_ms(ttl_ms, (self._clock() - started_s) * 1000)
        if granted >= self._quorum and committed and valid_ms > 0:
            return Lease(
                resources=names,
                token=token,
                ttl_ms=ttl_ms,
                validity_ms=valid_ms,
                valid_until_s=started_s + (ttl_ms - drift_ms(ttl_ms)) / 1000,
                fence=fence_value,
                clock=self._clock,
            )
        # A grant, or a request that may have landed unseen (timed out, or its
        # connection closed before the reply was read), must not linger.
        if granted or any(
            isinstance(reply, NodeError) and (reply.timed_out or reply.kind == "closed")
            for reply in replies
        ):
            self._nodes.round(self._commands.release(names, token), Suspects.SEND)
        return replies
