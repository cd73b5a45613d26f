"""The lease checker of the partition scenarios can fail: crafted records it must flag."""

from __future__ import annotations

from tests.chaos.leases import Hold, fence_inversions, overlaps


def hold(holder: str, granted_s: float, released_s: float, fence: int | None) -> Hold:
    return Hold(holder, granted_s, released_s, valid_until_s=granted_s + 1.0, fence=fence)


def test_back_to_back_leases_pass() -> None:
    holds = [hold("a", 0.0, 0.1, 1), hold("b", 0.1, 0.2, 2), hold("a", 0.3, 0.4, 3)]
    assert overlaps(holds) == []
    assert fence_inversions(holds) == []


def test_a_grant_inside_another_lease_is_an_overlap() -> None:
    first, second = hold("a", 0.0, 0.2, 1), hold("b", 0.15, 0.3, 2)
    assert overlaps([second, first]) == [(first, second)]


def test_a_lease_inside_another_one_and_one_after_both() -> None:
    outer, inner, after = hold("a", 0.0, 0.5, 1), hold("b", 0.1, 0.2, 2), hold("c", 0.6, 0.7, 3)
    assert overlaps([after, inner, outer]) == [(outer, inner)]


def test_a_lease_ends_at_its_validity_even_if_released_later() -> None:
    # Held past its validity (a paused holder): the next grant after the validity is fine.
    paused = Hold("a", 0.0, released_s=5.0, valid_until_s=0.9, fence=1)
    assert overlaps([paused, hold("b", 1.0, 1.1, 2)]) == []
    assert overlaps([paused, hold("b", 0.8, 1.1, 2)]) != []


def test_fences_must_rise_in_grant_order() -> None:
    assert fence_inversions([hold("a", 0.0, 0.1, 5), hold("b", 0.2, 0.3, 5)]) != []
    assert fence_inversions([hold("b", 0.2, 0.3, 4), hold("a", 0.0, 0.1, 5)]) != []
    assert fence_inversions([hold("a", 0.0, 0.1, None), hold("b", 0.2, 0.3, 6)]) != []
