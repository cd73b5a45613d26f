"""Fencing tokens: how a lease's fence is read from the grants, and why it only grows.

``Redlock.acquire(..., fence=True)`` also returns ``lease.fence``, an integer
strictly greater than the fence of every earlier fenced lease that covered any of
the same resources. Each node keeps a counter per resource (key ``fence_prefix +
resource``, no TTL). On a grant, the acquire script sets the lease's counters on
that node to one more than the highest of them and returns that value; the
lease's fence is the maximum over the granting nodes. When every granting node
returned the same value, each of them now holds the fence itself, and nothing
more is needed. Otherwise (a node missed earlier grants, or lost its counters)
a second script writes the fence back, only while the node still holds the
lease's token, and a majority must confirm before the lease is handed out.

Why it is monotonic: the nodes that hold the fence (the granting majority, or
the write-back majority) share at least one node with a later lease's grant
majority; on that node the later grant could only happen after this lease's
token was gone, so after the counter was set, and it then counts past it.

Assumptions: no majority of nodes loses its counters (persist the lock nodes
with AOF, or restart a node that lost its data only after the maximum TTL and
never with an older counter), and nothing else writes those keys. Cost: none in
the steady state (the nodes agree); one extra round trip after they diverged.
Store the fence next to the data it guards and refuse writes with a smaller
one: that is what makes a paused, expired holder harmless.
"""

from __future__ import annotations

from collections.abc import Sequence


def fence_of(grants: Sequence[int]) -> tuple[int, bool]:
    """Return the lease's fence and whether it must be written back to the nodes.

    :param grants: the counters the granting nodes returned (at least one).
    """
    values = set(grants)
    # Every granting node already holds the fence when they all returned it.
    return max(values), len(values) > 1
