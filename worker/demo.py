"""``flashsale demo``: placeholder until the one-command demo lands (see the README)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the demo's options on ``parser``."""
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: object) -> int:
    """Run the demo."""
    print("the demo is not built yet")
    return 1
