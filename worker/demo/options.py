"""The options of ``flashsale demo``: names, defaults and the checks argparse applies."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def declare_options(parser: argparse.ArgumentParser) -> None:
    """Declare the demo's options on ``parser`` (their defaults are the documented ones)."""
    add = parser.add_argument
    add("--orders", type=_at_least(1), default=2000, help="orders to fire (default 2000)")
    add("--skus", type=_at_least(1), default=3, help="products on sale (default 3)")
    add("--stock", type=_at_least(0), default=None, help="units per SKU (default orders/10)")
    add("--workers", type=_at_least(1), default=2, help="worker processes (default 2)")
    add("--concurrency", type=_at_least(1), default=2, help="pool processes per worker (default 2)")
    add("--producers", type=_at_least(1), default=4, help="producer threads (default 4)")
    add(
        "--multi-line",
        type=_fraction,
        default=0.3,
        metavar="FRACTION",
        help="share of carts with 2-3 SKUs (default 0.3)",
    )
    add(
        "--max-quantity", type=_at_least(1), default=2, help="units per cart line, 1..N (default 2)"
    )
    add("--seed", type=int, default=None, help="random seed of the carts (default: random)")
    add(
        "--timeout",
        type=_positive_seconds,
        default=120.0,
        metavar="SECONDS",
        help="wait this long after the last submission for every order (default 120)",
    )
    add("--json", action="store_true", help="print the summary as one JSON object on stdout")
    add(
        "--flower",
        action="store_true",
        help="also start Flower (basic auth from FLOWER_BASIC_AUTH, or generated)",
    )
    add(
        "--keep-running",
        action="store_true",
        help="after the summary, keep everything up (to browse Flower, say) until Ctrl-C",
    )


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0 seconds, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value
