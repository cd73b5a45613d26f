"""The fence model of `test_fence_model`, with node losses gated by the README's rule.

The model lets a node lose its state only when every node has a status and the
node lost last was written back for the resource. The README asks less of an
operator: "before another node may go, wait until a fenced lease has reached it
(its `redlock-fence:` key reads `recovering`)", and nothing before the first
loss. With those gates the model finds fences that go down or repeat.
"""

from __future__ import annotations

import random

import pytest

from tests.locking.test_fence_model import Model

INTERLEAVINGS = 5_000


class ReadmeRule(Model):
    """The next loss waits only until the last node lost has a status again."""

    def may_wipe(self) -> bool:
        if any(not node.up for node in self.nodes):
            return False
        if self.handed_out and any(node.status is None for node in self.nodes):
            return False
        return self.wiped is None or self.nodes[self.wiped].status is not None


class FirstLossAnytime(Model):
    """The model's own rule, without 'every node has a status' (the README omits it)."""

    def may_wipe(self) -> bool:
        if any(not node.up for node in self.nodes):
            return False
        return self.wiped is None or self.nodes[self.wiped].counter is not None


def violations_of(model: type[Model], *, seed: int, interleavings: int) -> int:
    rng = random.Random(seed)
    found = 0
    for _ in range(interleavings):
        run = model(random.Random(rng.getrandbits(64)), legacy=False)
        run.run()
        found += run.violations
    return found


@pytest.mark.xfail(
    strict=True,
    reason="safety (fencing): with losses gated by the README's rule (a node 'recovering' "
    "instead of written back for the resource) fences go down (0 to 2 violations in 5,000 "
    "single-resource interleavings, by seed: 2 with seed 1; multi-resource leases, not "
    "modelled, make it common: see "
    "test_fence_survives_two_losses_one_after_the_other_as_the_readme_allows)",
)
def test_readme_loss_rule_keeps_fences_monotonic() -> None:
    assert violations_of(ReadmeRule, seed=1, interleavings=INTERLEAVINGS) == 0


def test_a_first_loss_before_every_node_has_a_status_keeps_fences_monotonic() -> None:
    assert violations_of(FirstLossAnytime, seed=10, interleavings=INTERLEAVINGS) == 0
