"""Repairing a lock node that lost its state: its fence counters brought up to the others'.

`repair_node` is what `Redlock.repair_node` (and ``flashsale repair-lock-node``) runs;
the argument for why a repaired node may vouch for its counters again is in
`locking.fencing`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence

from locking.commands import Commands
from locking.errors import FenceRepairFailed, NodeError
from locking.nodeset import NodeSet

logger = logging.getLogger(__name__)

#: How many counters one write of a repair raises (one script call).
REPAIR_BATCH = 500


def repair_node(nodes: NodeSet, commands: Commands, name: str) -> int:
    """Raise the fence counters of node ``name`` to the others' and mark it trusted.

    :param nodes: the lock's nodes.
    :param commands: the lock's payload builder (its key prefixes).
    :param name: the node's ``host:port``.
    :returns: how many counters were raised (0 when the node was trusted already).
    :raises ValueError: ``name`` is not a configured node.
    :raises FenceRepairFailed: a node did not answer, another node has no status,
        or the node lost its state (or another repair took over) meanwhile.
    """
    names = nodes.names
    if name not in names:
        raise ValueError(f"{name!r} is not one of the lock's nodes {names!r}")
    target = names.index(name)
    status = f"repairing {secrets.token_hex(8)}"
    if _repair_step(nodes, commands, target, [], status, "start") == 0:
        return 0  # trusted already
    highest: dict[str, int] = {}
    for index, other in enumerate(names):
        if index == target:
            continue
        if _ask(nodes, index, commands.fence_status(), name) is None:
            raise FenceRepairFailed(
                node=name, reason=f"{other} has no fence status (it lost its state too)"
            )
        for resource, value in _counters_of(nodes, commands, index, name):
            highest[resource] = max(value, highest.get(resource, 0))
    raised = 0
    resources = sorted(highest)
    for at in range(0, len(resources), REPAIR_BATCH):
        batch = resources[at : at + REPAIR_BATCH]
        values = [highest[resource] for resource in batch]
        raised += _repair_step(nodes, commands, target, batch, status, "raise", values)
    _repair_step(nodes, commands, target, [], status, "finish")
    logger.warning(
        "Lock node %r repaired: %d fence counters raised, it vouches for them again.",
        name,
        raised,
    )
    return raised


def _ask(nodes: NodeSet, index: int, payload: bytes, repaired: str) -> object:
    """One request to one node for a repair; raise on node trouble."""
    reply = nodes.ask(index, payload)
    if isinstance(reply, NodeError):
        raise FenceRepairFailed(node=repaired, reason=str(reply))
    return reply


def _counters_of(
    nodes: NodeSet, commands: Commands, index: int, repaired: str
) -> Iterator[tuple[str, int]]:
    """Yield every fence counter of the node at ``index``, resource and value."""
    cursor = 0
    while True:
        reply = _ask(nodes, index, commands.scan_counters(cursor), repaired)
        if not (isinstance(reply, list) and len(reply) == 2):
            raise FenceRepairFailed(node=repaired, reason=f"unexpected SCAN reply {reply!r}")
        keys = [key for key in reply[1] if isinstance(key, bytes)]
        if keys:
            resources = [commands.resource_of(key) for key in keys]
            values = _ask(nodes, index, commands.read_counters(resources), repaired)
            if not isinstance(values, list):
                raise FenceRepairFailed(node=repaired, reason=f"unexpected {values!r}")
            for resource, value in zip(resources, values, strict=True):
                if isinstance(value, bytes) and value.isdigit():
                    yield resource, int(value)
        cursor = int(reply[0])
        if cursor == 0:
            return


def _repair_step(
    nodes: NodeSet,
    commands: Commands,
    index: int,
    resources: Sequence[str],
    status: str,
    step: str,
    values: Sequence[int] = (),
) -> int:
    """Run one step (start, raise, finish) of the repair script on the node at ``index``."""
    name = nodes.names[index]
    reply = _ask(nodes, index, commands.repair(resources, status, step, values), name)
    if not isinstance(reply, int) or reply < 0:
        raise FenceRepairFailed(
            node=name, reason="it lost its state again, or another repair took over: run it again"
        )
    return reply
