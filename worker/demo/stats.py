"""The one percentile used by the demo's summary, the chaos report and the benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of sorted values (None when there are none).

    The smallest value with at least ``fraction`` of the values at or below it: always a
    measured value, never an interpolation.

    :param fraction: 0.5 for the median, 0.99 for p99.
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
