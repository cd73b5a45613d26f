"""`tasks.contended.RecentlyContended`: which resource sets count as contended (pure logic)."""

from __future__ import annotations

import pytest

from tasks.contended import RecentlyContended


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_refusal_counts_for_the_window_then_expires() -> None:
    clock = Clock()
    memory = RecentlyContended(window_ms=1000, capacity=10, clock=clock)
    assert not memory.is_contended(["sku:A"])
    memory.refused(["sku:A"])
    clock.now_s += 0.999
    assert memory.is_contended(["sku:A"])
    assert not memory.is_contended(["sku:B"])
    assert not memory.is_contended(["sku:A", "sku:B"])
    clock.now_s += 0.002
    assert not memory.is_contended(["sku:A"])


def test_a_new_refusal_extends_the_window_and_quiet_forgets_at_once() -> None:
    clock = Clock()
    memory = RecentlyContended(window_ms=1000, capacity=10, clock=clock)
    memory.refused(["sku:A"])
    clock.now_s += 0.8
    memory.refused(["sku:A"])
    clock.now_s += 0.8
    assert memory.is_contended(["sku:A"])
    memory.quiet(["sku:A"])
    memory.quiet(["sku:A"])
    assert not memory.is_contended(["sku:A"])


def test_the_least_recently_refused_go_first_beyond_the_capacity() -> None:
    memory = RecentlyContended(window_ms=1000, capacity=2, clock=Clock())
    for sku in "ABA":
        memory.refused([f"sku:{sku}"])
    memory.refused(["sku:C"])
    assert len(memory) == 2
    assert [memory.is_contended([f"sku:{sku}"]) for sku in "ABC"] == [True, False, True]


@pytest.mark.parametrize(("window_ms", "capacity"), [(-1.0, 1), (1.0, 0)])
def test_invalid_bounds_are_refused(window_ms: float, capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        RecentlyContended(window_ms=window_ms, capacity=capacity)
