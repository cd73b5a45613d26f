"""The exceptions of the lock library: one root, `LockError`, and a subclass per outcome.

Every error carries the context an operator needs (resources, votes, each node's
error) and none of them chains a raw `redis` or socket exception: those are
translated at the node boundary into `NodeError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class LockError(Exception):
    """Root of every error raised by `locking`."""


class ConfigurationError(LockError):
    """The lock was configured in a way that cannot be safe (too few nodes, bad URL)."""


#: Every value of `NodeError.kind`: what went wrong when a node was contacted.
#: ``timeout``: no answer in time (or a send buffer that stayed full); ``refused``: the
#: port refused the connection; ``unresolvable``: the host name did not resolve within
#: the connect timeout; ``closed``: the connection was closed or reset; ``auth``: the
#: credentials or the user's permissions were refused; ``protocol``: the peer does not
#: speak RESP; ``redis_error``: the node answered with an error; ``io``: any other
#: socket or TLS failure.
NODE_ERROR_KINDS = (
    "timeout",
    "refused",
    "unresolvable",
    "closed",
    "auth",
    "protocol",
    "redis_error",
    "io",
)


class NodeError(LockError):
    """One node could not answer: refused, timed out, wrong credentials or a Redis error.

    :param node: the node's display name (``host:port``, never the password).
    :param reason: a short, human readable cause.
    :param kind: one of `NODE_ERROR_KINDS`; defaults to ``timeout`` when ``timed_out``
        is true, else ``io``.
    :param timed_out: true when the node did not answer within its timeout (implied by
        ``kind="timeout"``).
    """

    def __init__(
        self, node: str, reason: str, *, kind: str | None = None, timed_out: bool = False
    ) -> None:
        kind = kind or ("timeout" if timed_out else "io")
        if kind not in NODE_ERROR_KINDS:
            raise ValueError(f"kind must be one of {NODE_ERROR_KINDS}, got {kind!r}")
        super().__init__(f"lock node {node}: {reason}")
        self.node = node
        self.reason = reason
        self.kind = kind
        self.timed_out = timed_out or kind == "timeout"


class NotAcquired(LockError):
    """Base of the two ways an acquisition can fail after its retries."""

    def __init__(self, message: str, *, resources: Sequence[str], attempts: int) -> None:
        super().__init__(message)
        self.resources = tuple(resources)
        self.attempts = attempts


class LockContended(NotAcquired):
    """Another holder owns the resources on enough nodes that no quorum was reached.

    :param votes: on the last attempt, how many nodes granted the lock (``granted``),
        refused it because another token holds it (``held``), or failed (``failed``).
    """

    def __init__(
        self, *, resources: Sequence[str], attempts: int, votes: Mapping[str, int]
    ) -> None:
        super().__init__(
            f"lock on {list(resources)!r} is held elsewhere after {attempts} attempt(s) "
            f"(votes: {dict(votes)!r})",
            resources=resources,
            attempts=attempts,
        )
        self.votes = dict(votes)


class QuorumUnavailable(NotAcquired):
    """Too many nodes are failing for any client to reach a quorum.

    :param node_errors: the error of each failing node on the last attempt.
    """

    def __init__(
        self, *, resources: Sequence[str], attempts: int, node_errors: Sequence[NodeError]
    ) -> None:
        reasons = "; ".join(str(error) for error in node_errors)
        super().__init__(
            f"no quorum possible for {list(resources)!r} after {attempts} attempt(s): {reasons}",
            resources=resources,
            attempts=attempts,
        )
        self.node_errors = tuple(node_errors)


class LeaseLost(LockError):
    """A held lease can no longer be trusted: it expired, or an extension missed quorum.

    :param resources: the resources the lease covered.
    :param reason: why the lease is considered lost.
    """

    def __init__(self, *, resources: Sequence[str], reason: str) -> None:
        super().__init__(f"lease on {list(resources)!r} lost: {reason}")
        self.resources = tuple(resources)
        self.reason = reason


class ExtensionLimitReached(LeaseLost):
    """The lease was extended as often as allowed; release it and acquire anew."""
