"""The fence model of `test_fence_model`, with node losses gated by other rules.

The README's former rule ("before another node may go, wait until a fenced lease
has reached it: its `redlock-fence:` key reads `recovering`") let fences go down
(about 1 run in 10,000, and often with multi-resource leases, which the model
leaves out: see test_review_defects). The current rule (every node reads
"trusted"; `Redlock.repair_node` after a loss) is the model's own.
"""

from __future__ import annotations

import random

from tests.locking.test_fence_model import Model

INTERLEAVINGS = 5_000


class FirstLossAnytime(Model):
    """A loss once the last one was written back for the resource, whatever the
    statuses: also while a late-joining node has none."""

    def may_wipe(self) -> bool:
        if any(not node.up for node in self.nodes):
            return False
        return self.wiped is None or self.nodes[self.wiped].counter is not None


def violations_of(model: type[Model], *, seed: int, interleavings: int) -> int:
    """Count fences that went down or repeated."""
    rng = random.Random(seed)
    found = 0
    for _ in range(interleavings):
        run = model(random.Random(rng.getrandbits(64)), legacy=False)
        run.run()
        found += run.violations
    return found


def test_readme_loss_rule_keeps_fences_monotonic() -> None:
    # The README's rule is the model's own (every node "trusted" before a loss).
    assert violations_of(Model, seed=1, interleavings=INTERLEAVINGS) == 0


def test_a_first_loss_before_every_node_has_a_status_keeps_fences_monotonic() -> None:
    assert violations_of(FirstLossAnytime, seed=10, interleavings=INTERLEAVINGS) == 0
