"""Fencing tokens: how a lease's fence is read from the nodes, and why it only grows.

``Redlock.acquire(..., fence=True)`` also returns ``lease.fence``, an integer
strictly greater than the fence of every earlier fenced lease that covered any of
the same resources, under the assumptions below.

Mechanism. Each node keeps a counter per resource (key ``fence_prefix +
resource``, no TTL) and one status key (``fence_prefix`` itself) that says
which of its counters it can vouch for: ``trusted`` (all of them; a missing one
is 0), ``recovering`` (the node lost its state once: only the counters written
back since, i.e. the ones present), or none (a new node, or one that just lost
its state). A granting node reports ``{"fence", proposal, trust}``: one more
than its highest counter of the lease, and whether those counters are trusted;
a trusted node also sets them to the proposal in the same script. The client
(`plan`) takes the fence as the highest proposal once a majority of nodes
reported trusted counters. When fewer than a majority of granting nodes are
trusted, a second round reads the counters of the other nodes (`READ_FENCE`).
When the granting nodes do not all hold the fence yet (they disagreed, or one is
not trusted), a third round writes it back (`COMMIT_FENCE`, only where the
lease's token still holds, and a majority must confirm before the lease is used);
a write-back makes that counter trusted on a recovering node. The node's status
is decided by the client from the replies (`status_for_new_nodes`): a node
without one is ``recovering`` when a majority of nodes have theirs, and
``trusted`` when a majority has none (a new cluster, or one upgraded from
counters without statuses); the write-back sets it.

Cost: one round trip in the steady state (a majority of trusted nodes that
agree); two after they diverged (the write-back); three for the first leases of
a resource after a node lost its state (a read, then the write-back), which
also repairs that node's counter for the resource.

Why the fence only grows. Say a node *holds* fence F when its counter was set to
at least F while trusted (by the grant, or by the write-back while the lease's
token was there), and stops holding anything when it loses its state. Every
fence is held by a majority before its lease is handed out. The next lease's
fence is the highest proposal over a majority T of trusted counters, read after
its own grants. A node that lost its state is not trusted (no status, or
recovering without the counter) until a write-back of a fence computed after its
return, which is higher than anything it held. So T is drawn from the nodes that
kept their state or were written back since, and any majority T meets the
majority that holds the last fence F* minus the nodes that lost it: with w such
nodes, T lies among N - w nodes and the holders among those are at least
quorum - w, and quorum + quorum - w > N - w. That node's counter is at least F*,
so the new fence is greater. Token-checked write-backs keep a late or paused
client's write from vouching for a counter: it lands only while its lease's
keys are on that node, i.e. after that node's return, with a fence computed
after it. `tests/locking/test_fence_model.py` checks this on random
interleavings of grants, slow nodes, late requests, losses and restarts.

Assumptions, and what does not hold:

- A node that loses its state is marked recovering before a majority of nodes
  lack a status: two nodes of three losing their state before a fenced lease
  reached the first one again looks like a new cluster, and their counters are
  trusted from 0. So does a node restored from a backup (it has a status and old
  counters): never restore a lock node from a backup.
- At most ``N - quorum`` nodes (one of three) are untrusted for a resource when
  it is next acquired with a fence. A node stays untrusted for a resource until a
  fenced lease of that resource is granted or written back on it; a resource
  nobody locked while two nodes of three lost their state one after the other
  has no trusted majority. Then (`Plan.backed` is False, logged as a warning) the
  fence is the highest counter any node reported, possibly lower than an earlier
  one; it is written back and trusted from then on. The database guard refuses
  such a lease (`fence <= :fence`), and `Redlock.advance_fence` lifts the
  counters above the database's fence: the same repair as after losing a
  majority of nodes.
- Mutual exclusion itself, which fences back up but do not replace, needs a node
  that lost its state to stay out for longer than the longest lease lived: its
  TTL, or ``(max_extensions + 1) x TTL`` for a lease that is extended (11 x TTL
  with the defaults), plus the clock drift.
- Nothing else writes the counters or the status keys.

Store the fence next to the data it guards and refuse writes with a smaller one
(and a different lease with an equal one): that is what makes a paused, expired
holder harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from locking.timing import quorum

#: The status a node without one gets when a majority of nodes have none (a new cluster).
GENESIS = "trusted"
#: The status a node without one gets when a majority of nodes have theirs: it lost its state.
RECOVERING = "recovering"


class Trust(IntEnum):
    """Whether a node vouches for its counters of a lease, as the node scripts report it."""

    #: The node has no status: new, or it lost its state; nobody decided yet.
    UNKNOWN = -1
    #: The node is recovering and at least one of the counters was not written back yet.
    UNTRUSTED = 0
    #: Every counter is at least as high as every fence the node ever held.
    TRUSTED = 1


@dataclass(frozen=True)
class Report:
    """What one node said about the counters of a lease.

    :param proposal: one more than the node's highest counter of the lease's resources.
    :param trust: whether the node vouches for those counters.
    """

    proposal: int
    trust: Trust


@dataclass(frozen=True)
class Plan:
    """The fence of a lease and what must happen before the lease is handed out.

    :param fence: the lease's fence.
    :param write_back: some granting node does not hold the fence yet: write it back
        and require a majority to confirm.
    :param status: the status to give nodes that have none (`GENESIS`, `RECOVERING`),
        or "" when the replies do not decide it.
    :param backed: True when a majority of trusted counters backs the fence (the
        guarantee holds); False for the best effort described in the module docstring.
    """

    fence: int
    write_back: bool
    status: str
    backed: bool


def status_for_new_nodes(reports: Sequence[Report | None], *, nodes: int) -> str:
    """Return the status a node without one gets, from what the nodes reported.

    :param reports: per configured node, its report, or None when it gave none.
    :param nodes: how many nodes are configured.
    """
    needed = quorum(nodes)
    known = [report for report in reports if report is not None]
    if sum(1 for report in known if report.trust is not Trust.UNKNOWN) >= needed:
        return RECOVERING
    if sum(1 for report in known if report.trust is Trust.UNKNOWN) >= needed:
        return GENESIS
    return ""


def plan(
    reports: Sequence[Report | None], granting: Sequence[bool], *, read_all: bool
) -> Plan | None:
    """Decide a lease's fence from the nodes' reports, or return None.

    None before the read round means: read the other nodes' counters first; after
    it: too few nodes answered (neither a majority of trusted counters nor every
    node), so give up this attempt (release, retry later) rather than guess.

    :param reports: per configured node, its report (from its grant if it granted,
        else from the read round), or None.
    :param granting: per configured node, whether it granted the lease.
    :param read_all: whether the other nodes' counters were read already.
    """
    nodes = len(reports)
    status = status_for_new_nodes(reports, nodes=nodes)
    known = [report for report in reports if report is not None]
    trusted = sum(
        1
        for report in known
        if report.trust is Trust.TRUSTED or (report.trust is Trust.UNKNOWN and status == GENESIS)
    )
    if trusted < quorum(nodes) and not read_all:
        return None
    if trusted < quorum(nodes) and len(known) < nodes:
        return None  # a node that did not answer may be the one that holds the last fence
    # With every node read, the trusted ones include every node that holds the last
    # fence and kept its state; with none trusted, the last fence may be lost.
    backed = trusted > 0
    fence = max(report.proposal for report in known)
    # Only a trusted granting node wrote its proposal; the others need the write-back.
    holding = all(
        report is not None and report.trust is Trust.TRUSTED and report.proposal == fence
        for report, granted in zip(reports, granting, strict=True)
        if granted
    )
    return Plan(fence=fence, write_back=not holding, status=status, backed=backed)
