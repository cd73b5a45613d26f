"""The one fan-out of the lock: every request leaves before any reply is read.

Acquire, extend, fence and release all go through `fan_out`. It runs in the
caller's thread: the nodes work in parallel while this thread writes to the next
socket, so the wall time of a round is about one round trip plus the send cost,
and a silent node costs at most the read timeout, not one timeout per node.

A reply the round does not read (not awaited, late, or left behind because an
exception ended the round between send and read) stays in flight on its
connection and is skipped by the next read there (`locking.node`): a round needs
no cleanup to be safe against an exception at any point.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import Enum

from locking.errors import NodeError
from locking.node import Node


class Suspects(Enum):
    """What a round does with nodes suspected after a recent timeout."""

    #: Do not contact them; they count as failed votes (acquire, extend).
    SKIP = "skip"
    #: Send to them but do not wait; their reply is discarded when it comes (release).
    #: Only on an open connection: a new one could not order the request after the
    #: late ones, and connecting to a silent node would cost the connect timeout. (An
    #: open connection the node itself closed is replaced: nothing queued on it runs.)
    SEND = "send"
    #: Treat them like any other node (health checks).
    AWAIT = "await"


def fan_out(
    nodes: Sequence[Node],
    payload: bytes,
    *,
    read_timeout_s: float,
    suspects: Suspects,
    await_replies: bool = True,
) -> list[object]:
    """Send ``payload`` to every node, then collect one reply (or `NodeError`) per node.

    :param nodes: the configured nodes, in a fixed order.
    :param payload: one RESP-encoded command, identical for every node.
    :param read_timeout_s: how long after the last send the round waits for replies.
    :param suspects: how suspected nodes are treated.
    :param await_replies: False to return right after sending: every reply stays in
        flight (skipped by the next read on its connection) and is reported as None.
    """
    now = time.monotonic()
    replies: list[object] = [None] * len(nodes)
    waiting: list[int] = []
    for index, node in enumerate(nodes):
        suspect = suspects is not Suspects.AWAIT and node.is_suspect(now)
        if suspect and (suspects is Suspects.SKIP or not node.connected):
            replies[index] = NodeError(node.name, "skipped: failed recently", timed_out=True)
            continue
        error = node.send(payload)
        if error is not None:
            replies[index] = error
        elif suspect:
            replies[index] = NodeError(node.name, "not awaited: failed recently", timed_out=True)
        else:
            waiting.append(index)
    if not await_replies:
        return replies
    deadline = time.monotonic() + read_timeout_s
    for index in waiting:
        replies[index] = nodes[index].read(deadline)
    return replies
