"""The extra rounds of a fenced acquisition: reading counters to decide a fence, writing it back.

`decide_fence` and `commit_fence` are what `Redlock.acquire` runs after a fenced grant
when the granting nodes alone cannot vouch for the fence; the rules they apply are
in `locking.fencing`.
"""

from __future__ import annotations

import logging

from locking.commands import Commands, counter_report
from locking.fanout import Suspects
from locking.fencing import Plan, Report, plan
from locking.nodeset import NodeSet

logger = logging.getLogger(__name__)


def decide_fence(
    nodes: NodeSet,
    commands: Commands,
    names: tuple[str, ...],
    reports: list[Report | None],
    granting: list[bool],
) -> Plan | None:
    """Decide the fence of a granted lease, reading the other nodes' counters if needed.

    :param nodes: the lock's nodes.
    :param commands: the lock's payload builder (its key prefixes).
    :param names: the lease's resources.
    :param reports: per node, its grant's report (None where it did not grant);
        filled in with the counters read from the other nodes when they are needed.
    :param granting: per node, whether it granted the lease.
    :returns: the plan, or None when too few nodes answered to decide it safely
        (`locking.fencing.plan`).
    """
    decided = plan(reports, granting, read_all=False)
    if decided is None:
        # Fewer than a majority of the granting nodes vouch for their counters
        # (one lost its state): a majority of trusted counters must be read.
        reads = nodes.round(commands.read_fence(names), Suspects.SKIP)
        for index, reply in enumerate(reads):
            if not granting[index]:
                reports[index] = counter_report(reply)
        decided = plan(reports, granting, read_all=True)
        if decided is None:
            logger.warning(
                "Fence of %r not decided: too few lock nodes answered that vouch for "
                "their counters; the attempt is given up.",
                names,
            )
            return None
    if not decided.backed:
        logger.warning(
            "Fence %r of %r is not backed by a majority of trusted counters: "
            "it may be lower than an earlier one (see locking.fencing).",
            decided.fence,
            names,
        )
    return decided


def commit_fence(
    nodes: NodeSet, commands: Commands, names: tuple[str, ...], token: str, decided: Plan
) -> bool:
    """Write the decided fence back where the lease's token holds; True on a quorum.

    :param token: the lease's token (a node where it no longer holds writes nothing).
    :param decided: the plan whose fence and status are written.
    """
    payload = commands.commit_fence(names, token, decided.fence, decided.status)
    replies = nodes.round(payload, Suspects.SKIP)
    return sum(1 for reply in replies if reply == 1) >= nodes.quorum
