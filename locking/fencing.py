"""Fencing tokens: how a lease's fence is read from the nodes, and why it only grows.

``Redlock.acquire(..., fence=True)`` also returns ``lease.fence``, an integer
strictly greater than the fence of every earlier fenced lease that covered any of
the same resources, under the assumptions below.

Mechanism. Each node keeps a counter per resource (key ``fence_prefix +
resource``, no TTL) and one status key (``fence_prefix`` itself: no resource
name is empty) that says which of its counters it vouches for: ``trusted`` (all
of them; a missing one is 0), ``recovering`` (the node lost its state once: only
the counters written back since, i.e. the ones present), or none (a new node, or
one that just lost its state). A granting node replies ``["fence", proposal,
trust]``: one more than its highest counter of the lease, and whether it vouches
for those counters; a node that does also sets them to the proposal, in the same
script. The client (`plan`) then takes the highest proposal:

- when a majority of nodes vouch for their counters (the steady state: one round
  trip, nothing more when the granting nodes agree);
- otherwise it reads every other node's counters (`READ_FENCE`) and needs either
  a majority that vouches or an answer from every node; if a node is silent the
  attempt is given up (released, retried) rather than guessed.

When a granting node does not hold the fence yet (the nodes disagreed, or it did
not vouch), the fence is written back (`COMMIT_FENCE`, only where the lease's
token still holds; a majority must confirm before the lease is used), which makes
the counter trusted on a recovering node. The client also decides the status of
a node that has none, from the same replies (`status_for_new_nodes`):
``recovering`` when a majority of nodes have a status, ``trusted`` when a
majority has none (a new cluster, or one upgraded from counters without
statuses; given only where the lease's token proves the node did not lose its
state since it replied). Cost: one round trip in the steady state, two after the
nodes diverged, up to three for the first lease of a resource after a node lost
its state (a read when the granting majority does not vouch, then the write-back
that repairs that node's counter).

Why the fence only grows. Say a node *holds* fence F when its counter was set to
at least F while it vouched for it (by the grant, or by the write-back while the
lease's token was there); it stops holding anything when it loses its state.
Every fence is held by a majority before its lease is handed out. A node that
lost its state vouches for a counter again only after a write-back of a fence
computed after its return, which exceeds everything it held. The next lease
reads its proposals after its own grants, so after the last fence F* was held:

- from a majority T of vouching nodes: with w nodes that lost F* since, T lies
  among the N - w others, of which at least quorum - w still hold F*, and
  quorum + (quorum - w) > N - w, so T contains one;
- from every node: the vouching nodes include every node that still holds F*,
  and one does unless every holder lost its state.

Either way a proposal exceeds F*. Token-checked write-backs keep a late or
paused client from vouching for a low counter: the write lands only while its
lease's keys are on that node, so after that node's return and with a fence
computed after it. `tests/locking/test_fence_model.py` checks this on 20,000
random interleavings of grants, late and skipped requests, paused clients,
losses and restarts (0 violations; the previous rule, where every node vouched,
fails there).

Assumptions, and what does not hold:

- One node loses its state at a time: the next may lose it only once the last
  one has its status again (the next fenced lease that reaches it gives it
  ``recovering``) and every node has one (a new cluster's first leases give
  them). Two nodes of three without a status look like a new cluster, and their
  counters are trusted from 0.
- Not every node that holds a resource's last fence loses its state before a
  fenced lease of that resource is written back. A resource nobody locked while
  two of three nodes lost their state one after the other can have lost its last
  fence with them; when no node vouches for its counter, the fence is the highest
  counter found (a best effort, logged as a warning) and may be lower than an
  earlier one: the database guard refuses it, and `Redlock.advance_fence` lifts
  the counters above the database's fence, as after a majority of nodes lost
  their state. A node restored from a backup (a status, and old counters) breaks
  this too: never restore a lock node from a backup.
- Mutual exclusion, which fences back up but do not replace, needs a node that
  lost its state to stay out for longer than the longest lease lived: its TTL,
  or ``(max_extensions + 1) x TTL`` for a lease that is extended (11 x TTL with
  the defaults; an auto-extended lease lives at most about ``max_extensions / 3
  + 1`` TTLs), plus the clock drift. Counters and statuses do not depend on it.
- A fenced acquisition needs a majority of nodes that vouch for the resource's
  counters, or every node answering: while a node that lost its state is down
  and a second one does not vouch for a resource, fenced leases of that resource
  fail with `LockContended` (their grants are released) until the node is back.
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
    granted = [r for r, grant in zip(reports, granting, strict=True) if grant and r is not None]
    if (
        len(granted) >= quorum(nodes)
        and len(granted) == sum(granting)
        and all(report.trust is Trust.TRUSTED for report in granted)
        and len({report.proposal for report in granted}) == 1
    ):
        # The steady state: a majority vouches and agrees; every granting node holds it.
        fence = max(report.proposal for report in reports if report is not None)
        return Plan(fence=fence, write_back=fence != granted[0].proposal, status="", backed=True)
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
