"""Draw bench/results/e2e_bench.json: throughput per configuration, latency distribution.

./dev bench bench/plot_e2e.py   ->  bench/results/e2e_bench.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    data = json.loads((RESULTS / "e2e_bench.json").read_text())
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
    figure.savefig(RESULTS / "e2e_bench.png", dpi=110)


if __name__ == "__main__":
    main()
