"""`tasks.known_skus.KnownSkus`: known SKUs remembered, bounded; unknown ones asked again."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tasks.known_skus import KnownSkus


def test_known_skus_are_remembered_within_the_capacity_and_unknown_ones_never() -> None:
    products = {"A", "B", "C"}
    asked: list[list[str]] = []

    def lookup(skus: Sequence[str]) -> set[str]:
        asked.append(list(skus))
        return products & set(skus)

    known = KnownSkus(lookup, capacity=2)
    assert known.unknown(["A", "NOPE"]) == ["NOPE"]
    assert known.unknown(["A", "NOPE"]) == ["NOPE"]
    assert known.unknown(["B", "C"]) == []
    assert len(known) == 2  # A, the least recently used, went
    assert known.unknown(["C"]) == []
    assert asked == [["A", "NOPE"], ["NOPE"], ["B", "C"]]


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        KnownSkus(lambda skus: set(), capacity=0)
