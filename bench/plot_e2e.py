"""Draw the end-to-end benchmark's results.

./dev bench bench/plot_e2e.py                         ->  bench/results/e2e_bench.png
./dev bench bench/plot_e2e.py bench/results/X.json    ->  bench/results/X.png

A run of the fixed list (no ``--grid``) gives throughput per configuration and the
latency distribution. A ``--grid`` run gives, per scenario and feed, orders/s and
stack CPU per order against the total pool process count (workers x processes)
for every stack: ours, the no-op floor and the peer stacks.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).with_name("results")


def plot_list(data: dict[str, Any], out: Path) -> None:
    """Bars of orders/s per configuration, and the latency distribution."""
    summary = data["summary"]
    names = list(summary)
    figure, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    throughput = [summary[name]["orders_per_s"] for name in names]
    colors = ["#888888" if name.startswith("floor") else "#2b7bba" for name in names]
    left.barh(names, throughput, color=colors)
    left.invert_yaxis()
    left.set_xlabel("orders/s (median of rounds)")
    left.set_title(f"Throughput, {data['orders']} orders per run")
    for y, name in enumerate(names):
        ratio = summary[name]["ratio_to_floor"]
        if ratio is not None:
            left.text(throughput[y], y, f" {ratio:.2f}x floor", va="center")
    runs = data["runs"]
    for name in names:
        samples = sorted(v for run in runs[name] for v in run.get("latencies_ms", []))
        if not samples:
            continue
        shares = [(i + 1) / len(samples) for i in range(len(samples))]
        style = "--" if name.startswith("db guard") else "-"
        right.plot(samples, shares, style, label=name)
    right.set_xlim(0, 12)
    right.set_xlabel("ms, send_task to decision (paced, 100 orders/s; all rounds)")
    right.set_ylabel("share of orders decided within")
    right.set_title("Order latency distribution")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def plot_grid(data: dict[str, Any], out: Path) -> None:
    """Per (scenario, feed): orders/s and stack CPU ms/order against pool processes."""
    # (scenario, feed) -> stack -> [(pool processes, orders/s, cpu ms/order)]
    panels: dict[tuple[str, str], dict[str, list[tuple[int, float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for name, row in data["summary"].items():
        config = data["runs"][name][0]["config"]
        stack = name.split(" ")[0]
        processes = int(config["workers"]) * int(config["processes"])
        point = (processes, row["orders_per_s"], row["cpu_ms_per_order"]["stack, all roles"])
        scenarios = ["hot", "spread", "carts"] if stack == "floor" else [config["scenario"]]
        for scenario in scenarios:
            panels[(scenario, config["feed"])][stack].append(point)
    keys = sorted(key for key, stacks in panels.items() if len(stacks) > 1 or "floor" not in stacks)
    figure, axes = plt.subplots(2, len(keys), figsize=(5 * len(keys), 8), squeeze=False)
    for column, key in enumerate(keys):
        top, bottom = axes[0][column], axes[1][column]
        for stack, points in sorted(panels[key].items()):
            points.sort()
            xs = [p[0] for p in points]
            style = {"floor": "k--", "ours": "o-"}.get(stack, "s-")
            top.plot(xs, [p[1] for p in points], style, label=stack)
            bottom.plot(xs, [p[2] for p in points], style, label=stack)
        top.set_title(f"{key[0]}, {key[1]} feed, {data['orders']} orders")
        top.set_ylabel("orders/s (median of rounds)")
        bottom.set_ylabel("CPU ms per order, all roles of the stack")
        for axis in (top, bottom):
            axis.set_xlabel("pool processes (workers x processes)")
            axis.grid(alpha=0.3)
            axis.set_ylim(bottom=0)
        top.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "e2e_bench.json"
    data = json.loads(source.read_text())
    out = source.with_suffix(".png")
    grid = all("workers" in runs[0]["config"] for runs in data["runs"].values() if runs)
    if grid and any(" " in name and "x" in name.split(" ")[-2] for name in data["summary"]):
        plot_grid(data, out)
    else:
        plot_list(data, out)
    print(out)


if __name__ == "__main__":
    main()
