"""What each lock round sends, as one RESP payload for every node, and what its replies mean."""

from __future__ import annotations

from collections.abc import Sequence

from locking.errors import LockContended, NodeError, QuorumUnavailable
from locking.fencing import Report, Trust
from locking.lease import ReleaseOutcome
from locking.protocol import encode_command
from locking.scripts import (
    ACQUIRE_FENCED,
    ACQUIRE_MANY,
    ADVANCE_FENCE,
    COMMIT_FENCE,
    EXTEND,
    READ_COUNTERS,
    READ_FENCE,
    RELEASE,
    REPAIR_NODE,
    Script,
)

#: How many keys one SCAN step of `Redlock.repair_node` asks a node for.
SCAN_COUNT = 1000

#: How long a wake-up nobody waited for stays; a later waiter takes it and finds
#: the lock free or tries once for nothing.
WAKE_TTL_MS = 1000

#: The most wake-ups one release may leave per resource and node (`Redlock.release`).
MAX_WAKES = 64


class Commands:
    """Builds the payloads of acquire, fence, extend and release for one key namespace.

    :param key_prefix: prefix of the lock keys (``<prefix><resource>``).
    :param fence_prefix: prefix of the fence counters (``<prefix><resource>``).
    :param wake_prefix: prefix of the wake-up lists a release pushes to.
    """

    def __init__(self, *, key_prefix: str, fence_prefix: str, wake_prefix: str) -> None:
        self._key_prefix = key_prefix
        self._fence_prefix = fence_prefix
        self._wake_prefix = wake_prefix

    def acquire(self, names: Sequence[str], token: str, ttl_ms: int, *, fence: bool) -> bytes:
        """SET NX PX for one plain key, else the all-or-nothing (optionally fenced) script."""
        keys = self._keys(names)
        if fence:
            return _script(ACQUIRE_FENCED, keys + self._fence_keys(names), token, ttl_ms)
        if len(keys) == 1:
            return encode_command(["SET", keys[0], token, "NX", "PX", ttl_ms])
        return _script(ACQUIRE_MANY, keys, token, ttl_ms)

    def read_fence(self, names: Sequence[str]) -> bytes:
        """Read the highest counter of ``names`` and whether the node vouches for it."""
        return _script(READ_FENCE, self._fence_keys(names))

    def commit_fence(self, names: Sequence[str], token: str, fence: int, status: str) -> bytes:
        """Write ``fence`` back where the lease's token still holds; give a node ``status``
        if it has none ("" to leave it)."""
        return _script(
            COMMIT_FENCE, self._keys(names) + self._fence_keys(names), token, fence, status
        )

    def advance_fence(self, names: Sequence[str], at_least: int) -> bytes:
        """Raise the counters of ``names`` to ``at_least`` (never lower them)."""
        return _script(ADVANCE_FENCE, self._fence_keys(names), at_least)

    def fence_status(self) -> bytes:
        """GET the node's fence status."""
        return encode_command(["GET", self._fence_prefix])

    def scan_counters(self, cursor: int) -> bytes:
        """One SCAN step over the node's fence counters (not its status key)."""
        pattern = _glob_escape(self._fence_prefix) + "?*"
        return encode_command(["SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT])

    def resource_of(self, counter_key: bytes) -> str:
        """The resource name of a counter key SCAN returned."""
        return counter_key.decode()[len(self._fence_prefix) :]

    def read_counters(self, names: Sequence[str]) -> bytes:
        """Read the counters of ``names`` (no status, no proposal: the values)."""
        return _script(READ_COUNTERS, [self._fence_prefix + name for name in names])

    def repair(
        self, names: Sequence[str], status: str, step: str, values: Sequence[int] = ()
    ) -> bytes:
        """One step of a node's repair (`REPAIR_NODE`): "start", "raise" or "finish"."""
        return _script(REPAIR_NODE, self._fence_keys(names), status, step, *values)

    def extend(self, names: Sequence[str], token: str, ttl_ms: int) -> bytes:
        """PEXPIRE every key that still holds ``token``."""
        return _script(EXTEND, self._keys(names), token, ttl_ms)

    def release(self, names: Sequence[str], token: str, wakes: int = 1) -> bytes:
        """Compare-and-delete every key of the lease, waking ``wakes`` waiters per freed key."""
        if not 1 <= wakes <= MAX_WAKES:
            raise ValueError(f"wakes must be 1 to {MAX_WAKES}, got {wakes!r}")
        lists = [self._wake_prefix + name for name in names]
        return _script(RELEASE, self._keys(names), token, WAKE_TTL_MS, wakes, *lists)

    def wait_released(self, names: Sequence[str], timeout_ms: float) -> bytes:
        """Block until a release of any of ``names`` pushes a wake-up, or the timeout."""
        wakes = [self._wake_prefix + name for name in names]
        # BLPOP takes seconds (fractions since Redis 6); 0 would mean "forever".
        timeout_s = f"{max(timeout_ms, 1.0) / 1000:.3f}"
        return encode_command(["BLPOP", *wakes, timeout_s])

    def wait_keys(self, names: Sequence[str]) -> bytes:
        """What identifies a wait for ``names`` whatever its timeout (`Node.wait`)."""
        return "\0".join(self._wake_prefix + name for name in names).encode()

    def _keys(self, names: Sequence[str]) -> list[str]:
        return [self._key_prefix + name for name in names]

    def _fence_keys(self, names: Sequence[str]) -> list[str]:
        """The counters of ``names``, then the node's fence status (the bare prefix)."""
        return [self._fence_prefix + name for name in names] + [self._fence_prefix]


def is_grant(reply: object, *, fence: bool) -> bool:
    """True when an acquire reply grants the lock.

    A plain grant is "OK" (SET NX, `ACQUIRE_MANY`); a fenced grant is
    ``[b"fence", proposal, trust]``. No other command of the lock replies either,
    so a reply read for the wrong request is never taken for a grant.
    """
    if fence:
        return fence_report(reply) is not None
    return reply == b"OK"


def fence_report(reply: object) -> Report | None:
    """Parse a fenced grant (`ACQUIRE_FENCED`); None for any other reply."""
    return _report(reply, b"fence", 1)


def counter_report(reply: object) -> Report | None:
    """Parse a counter read (`READ_FENCE`) as the node's proposal; None for any other reply."""
    return _report(reply, b"counter", 0)


def _report(reply: object, tag: bytes, lowest: int) -> Report | None:
    if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == tag):
        return None
    _, value, trust = reply
    known = _TRUST.get(trust) if type(trust) is int else None
    if type(value) is not int or value < lowest or known is None:
        return None
    # A read returns the counter itself; the grant's proposal is one more.
    return Report(proposal=value + 1 - lowest, trust=known)


_TRUST = {int(trust): trust for trust in Trust}


def release_outcome(
    replies: list[object], *, keys: int, quorum: int
) -> tuple[ReleaseOutcome, bool]:
    """Return what a confirmed release's replies mean, and whether a node said a waiter
    took the previous release's wake-up (`RELEASE`).

    :param keys: how many lock keys the lease has.
    :param quorum: how many nodes make a majority.
    """
    released = failed = 0
    taken = False
    for reply in replies:
        if type(reply) is int:  # -1 - released when a waiter took a wake-up (`RELEASE`)
            taken = taken or reply < 0
            released += (reply if reply >= 0 else -1 - reply) == keys
        elif isinstance(reply, NodeError):
            failed += 1
    if released >= quorum:
        outcome = ReleaseOutcome.RELEASED
    elif released + failed < quorum:
        outcome = ReleaseOutcome.EXPIRED
    else:
        outcome = ReleaseOutcome.UNCONFIRMED
    return outcome, taken


def resource_names(resources: str | Sequence[str]) -> tuple[str, ...]:
    """Validate and de-duplicate the resources of a lease, keeping their order."""
    names = (resources,) if isinstance(resources, str) else tuple(resources)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ValueError(f"resources must be one or more non-empty strings, got {resources!r}")
    # A repeated name would be counted twice by the release script.
    return tuple(dict.fromkeys(names))


def _glob_escape(text: str) -> str:
    """Escape the characters SCAN's MATCH pattern treats as special."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _script(script: Script, keys: list[str], *args: str | int) -> bytes:
    return encode_command(["EVALSHA", script.sha, len(keys), *keys, *args])


def refusal(
    names: tuple[str, ...], attempts: int, replies: list[object], *, fence: bool, quorum: int
) -> LockContended | QuorumUnavailable:
    """Return the error for a lease refused on its last attempt, from that round's replies.

    Too many failed nodes for a quorum is `QuorumUnavailable`; otherwise the lock
    was held elsewhere, and `LockContended` carries the votes.
    """
    errors = [reply for reply in replies if isinstance(reply, NodeError)]
    if len(errors) > len(replies) - quorum:
        return QuorumUnavailable(resources=names, attempts=attempts, node_errors=errors)
    granted = sum(1 for reply in replies if is_grant(reply, fence=fence))
    votes = {
        "granted": granted,
        "held": len(replies) - granted - len(errors),
        "failed": len(errors),
    }
    return LockContended(resources=names, attempts=attempts, votes=votes)
