"""A Redlock over independent Redis nodes: fast, fenced, and honest about failures.

redlock = Redlock(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
with redlock.lock("sku:42", ttl_ms=5000) as lease:
    ...  # lease.check() before a commit that must be exclusive
"""

from locking.address import NodeAddress, redact_url
from locking.commands import MAX_WAKES
from locking.errors import (
    NODE_ERROR_KINDS,
    ConfigurationError,
    ExtensionLimitReached,
    FenceRepairFailed,
    LeaseLost,
    LockContended,
    LockError,
    NodeError,
    NotAcquired,
    QuorumUnavailable,
)
from locking.lease import Lease, ReleaseOutcome
from locking.redlock import Redlock
from locking.timing import NO_RETRY, RetryPolicy, drift_ms, quorum, validity_ms

__all__ = [
    "MAX_WAKES",
    "NODE_ERROR_KINDS",
    "NO_RETRY",
    "ConfigurationError",
    "ExtensionLimitReached",
    "FenceRepairFailed",
    "Lease",
    "LeaseLost",
    "LockContended",
    "LockError",
    "NodeAddress",
    "NodeError",
    "NotAcquired",
    "QuorumUnavailable",
    "Redlock",
    "ReleaseOutcome",
    "RetryPolicy",
    "drift_ms",
    "quorum",
    "redact_url",
    "validity_ms",
]
