"""A randomized model of fenced leases over three nodes, one of which may lose its state.

The nodes are pure Python copies of the fencing scripts (`locking.scripts`); the
client side uses the real reply parsers (`locking.commands`) and the real
decision (`locking.fencing.plan`). Clients interleave at random: each round
reaches every node promptly, late (the request lands up to two TTLs later, and
the node's later requests queue behind it) or not at all; clients pause between
rounds; holders release or walk away; a node loses its state, stays down for two
TTLs, and comes back empty, one node at a time (the next loss waits until the
last one was written back for the resource). Every lease handed out must carry a
fence above every fence handed out before it. The same model with the previous
rule (every node vouches for its counters, the fence is the highest grant) finds
violations, as the review did.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from locking.commands import counter_report, fence_report
from locking.fencing import Report, plan
from locking.timing import drift_ms, quorum

TTL_MS = 500
NODES = 3
INTERLEAVINGS = 20_000
STEPS = 100

Op = Callable[["ModelNode", int], object]
# A client task yields the op of its next round (or an int: sleep that many ms) and
# receives one reply per node (None when the node did not answer in time).
Task = Generator["Op | int", "list[object] | None", None]


@dataclass
class ModelNode:
    """One lock node: a lock key, the resource's fence counter, the node's fence status."""

    up: bool = True
    status: str | None = None
    counter: int | None = None
    lock: tuple[int, int] | None = None  # (token, expires at ms)
    queue: deque[tuple[int, Op]] = field(default_factory=deque)

    def run(self, op: Op, now: int) -> object:
        if self.lock is not None and self.lock[1] <= now:
            self.lock = None
        return op(self, now)

    def deliver(self, now: int) -> None:
        while self.queue and self.queue[0][0] <= now:
            at, op = self.queue.popleft()
            self.run(op, at)

    def wipe(self) -> None:
        self.up, self.status, self.counter, self.lock = False, None, None, None
        self.queue.clear()


def _held(node: ModelNode) -> bool:
    return node.lock is not None


def acquire_fenced(token: int) -> Op:
    """`ACQUIRE_FENCED` on one resource."""

    def op(node: ModelNode, now: int) -> object:
        if _held(node):
            return -1
        trust = -1 if node.status is None else 1
        if node.counter is None and node.status != "trusted" and trust == 1:
            trust = 0
        proposal = (node.counter or 0) + 1
        node.lock = (token, now + TTL_MS)
        if trust == 1:
            node.counter = proposal
        return [b"fence", proposal, trust]

    return op


def read_fence(node: ModelNode, now: int) -> object:
    """`READ_FENCE` on one resource."""
    trust = -1 if node.status is None else 1
    if node.counter is None and node.status != "trusted" and trust == 1:
        trust = 0
    return [b"counter", node.counter or 0, trust]


def commit_fence(token: int, fence: int, status: str) -> Op:
    """`COMMIT_FENCE` on one resource."""

    def op(node: ModelNode, now: int) -> object:
        if status == "recovering" and node.status is None:
            node.status = status
        if node.lock is None or node.lock[0] != token:
            return 0
        if status == "trusted" and node.status is None:
            node.status = status
        node.counter = max(node.counter or 0, fence)
        return 1

    return op


def release(token: int) -> Op:
    def op(node: ModelNode, now: int) -> object:
        if node.lock is not None and node.lock[0] == token:
            node.lock = None
            return 1
        return 0

    return op


def legacy_acquire(token: int) -> Op:
    """The previous `ACQUIRE_FENCED`: every node counts up and vouches for its counter."""

    def op(node: ModelNode, now: int) -> object:
        if _held(node):
            return -1
        node.counter = (node.counter or 0) + 1
        node.lock = (token, now + TTL_MS)
        return [b"fence", node.counter, 1]

    return op


def legacy_fence_of(grants: list[int]) -> tuple[int, bool]:
    """The previous decision: the highest grant, written back when they differ."""
    return max(grants), len(set(grants)) > 1


class Model:
    """One random interleaving of clients, slow nodes and node losses."""

    def __init__(self, rng: random.Random, *, legacy: bool) -> None:
        self.rng = rng
        self.legacy = legacy
        self.now = 0
        self.nodes = [ModelNode() for _ in range(NODES)]
        self.slow = rng.uniform(0.0, 0.4)  # chance that a request lands late
        self.skip = rng.uniform(0.0, 0.4)  # chance that a node is skipped (suspect)
        self.pause = rng.uniform(0.0, 0.2)  # chance that a client pauses between rounds
        self.tokens = 0
        self.handed_out: list[int] = []
        self.violations = 0
        self.unbacked = 0
        self.wiped: int | None = None
        self.restart_at: int | None = None

    # --- the world -------------------------------------------------------------
    def advance(self, ms: int) -> None:
        self.now += ms
        if self.restart_at is not None and self.now >= self.restart_at and self.wiped is not None:
            self.nodes[self.wiped].up = True  # back, empty
            self.restart_at = None
        for node in self.nodes:
            node.deliver(self.now)

    def may_wipe(self) -> bool:
        if any(not node.up for node in self.nodes):
            return False
        # Every node has its status (a new cluster's first leases give them)...
        if not self.legacy and self.handed_out and any(n.status is None for n in self.nodes):
            return False
        if self.wiped is None:
            return True
        # ... and one loss at a time: the last node lost was written back for the resource.
        return self.nodes[self.wiped].counter is not None

    def wipe(self) -> None:
        index = self.rng.randrange(NODES)
        self.nodes[index].wipe()
        self.wiped = index
        self.restart_at = self.now + 2 * TTL_MS + self.rng.randrange(TTL_MS)

    def round(self, op: Op) -> list[object]:
        replies: list[object] = []
        for node in self.nodes:
            if not node.up or self.rng.random() < self.skip:
                replies.append(None)
            elif self.rng.random() < self.slow:
                at = self.now + self.rng.randrange(1, 2 * TTL_MS)
                node.queue.append((max([at, *(a for a, _ in node.queue)]), op))
                replies.append(None)
            elif node.queue:  # behind a late request on the same connection: late too
                node.queue.append((node.queue[-1][0], op))
                replies.append(None)
            else:
                replies.append(node.run(op, self.now))
        self.advance(self.rng.randrange(0, 6))
        return replies

    # --- a client ----------------------------------------------------------------
    def client(self) -> Task:
        self.tokens += 1
        token = self.tokens
        started = self.now
        acquire = legacy_acquire(token) if self.legacy else acquire_fenced(token)
        replies = yield acquire
        assert replies is not None
        reports: list[Report | None] = [fence_report(reply) for reply in replies]
        granting = [report is not None for report in reports]
        if sum(granting) < quorum(NODES):
            yield release(token)
            return
        if self.legacy:
            fence, write_back = legacy_fence_of([r.proposal for r in reports if r is not None])
            status = ""
        else:
            decided = plan(reports, granting, read_all=False)
            if decided is None:
                reads = yield read_fence
                assert reads is not None
                for index, reply in enumerate(reads):
                    if not granting[index]:
                        reports[index] = counter_report(reply)
                decided = plan(reports, granting, read_all=True)
                if decided is None:  # too few nodes answered to tell
                    yield release(token)
                    return
            if not decided.backed:
                self.unbacked += 1
            fence, write_back, status = decided.fence, decided.write_back, decided.status
        if write_back:
            confirmed = yield commit_fence(token, fence, status)
            assert confirmed is not None
            if sum(1 for reply in confirmed if reply == 1) < quorum(NODES):
                yield release(token)
                return
        if self.now - started >= TTL_MS - drift_ms(TTL_MS):
            yield release(token)
            return
        if self.handed_out and fence <= max(self.handed_out):
            self.violations += 1
        self.handed_out.append(fence)
        yield self.rng.randrange(0, TTL_MS)  # hold
        if self.rng.random() < 0.8:  # else walk away: the keys expire
            yield release(token)

    def run(self) -> None:
        tasks: list[tuple[Task, object]] = []
        for _ in range(STEPS):
            choice = self.rng.random()
            if choice < 0.3 and len(tasks) < 3:
                task = self.client()
                tasks.append((task, next(task)))
            elif choice < 0.35 and self.may_wipe():
                self.wipe()
            elif choice < 0.5:
                self.advance(self.rng.randrange(1, TTL_MS))
            elif tasks:
                index = self.rng.randrange(len(tasks))
                task, request = tasks[index]
                if self.rng.random() < self.pause:
                    self.advance(self.rng.randrange(TTL_MS, 2 * TTL_MS))
                try:
                    if isinstance(request, int):
                        self.advance(request)
                        tasks[index] = (task, task.send(None))
                    else:
                        assert callable(request)
                        tasks[index] = (task, task.send(self.round(request)))
                except StopIteration:
                    tasks.pop(index)


def explore(*, legacy: bool, seed: int) -> tuple[int, int, int]:
    """Run `INTERLEAVINGS` models; return (violations, leases handed out, unbacked fences)."""
    rng = random.Random(seed)
    violations = leases = unbacked = 0
    for _ in range(INTERLEAVINGS):
        model = Model(random.Random(rng.getrandbits(64)), legacy=legacy)
        model.run()
        violations += model.violations
        leases += len(model.handed_out)
        unbacked += model.unbacked
    return violations, leases, unbacked


def test_fences_never_repeat_or_go_down_with_one_node_losing_its_state_at_a_time() -> None:
    violations, leases, unbacked = explore(legacy=False, seed=10)
    assert leases > INTERLEAVINGS // 2  # the interleavings really hand out leases
    assert (violations, unbacked) == (0, 0)


def test_the_model_finds_the_previous_rules_violations() -> None:
    violations, leases, _ = explore(legacy=True, seed=10)
    assert leases > INTERLEAVINGS // 2
    assert violations > 0
