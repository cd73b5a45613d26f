"""A bounded per-process memory of SKUs known to be products.

The order path checks an order's SKUs before it takes the fenced lock, so that
an order for a SKU that does not exist leaves no fence counter on the lock
nodes. Only known SKUs are remembered (a product may be added at any time), and
at most `KnownSkus.capacity` of them, least recently used first out: on the hot
path a SKU is known after its first order and the check costs no round trip.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence


class KnownSkus:
    """Remembers up to ``capacity`` SKUs that exist.

    :param lookup: returns which of the given SKUs exist (a database read).
    :param capacity: SKUs remembered at most.
    """

    def __init__(self, lookup: Callable[[Sequence[str]], Iterable[str]], *, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        self._lookup = lookup
        self._capacity = capacity
        self._known: OrderedDict[str, None] = OrderedDict()

    @property
    def capacity(self) -> int:
        """SKUs remembered at most."""
        return self._capacity

    def unknown(self, skus: Sequence[str]) -> list[str]:
        """Return those of ``skus`` that are not products (one lookup for the unremembered)."""
        missing = []
        for sku in skus:
            if sku in self._known:
                self._known.move_to_end(sku)
            else:
                missing.append(sku)
        if not missing:
            return []
        found = set(self._lookup(missing))
        for sku in found:
            self._known[sku] = None
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)
        return [sku for sku in missing if sku not in found]

    def __len__(self) -> int:
        return len(self._known)
