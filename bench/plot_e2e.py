"""Draw bench/results/e2e_bench.json: throughput per configuration and latency spread.

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
    measured = [n for n in names if runs[n] and runs[n][0]["latency_p50_ms"] is not None]
    p50 = [summary[n]["latency_p50_ms"] for n in measured]
    p99 = [summary[n]["latency_p99_ms"] for n in measured]
    positions = range(len(measured))
    right.bar([p - 0.2 for p in positions], p50, width=0.4, label="p50")
    right.bar([p + 0.2 for p in positions], p99, width=0.4, label="p99")
    right.set_xticks(list(positions), measured, rotation=30, ha="right")
    right.set_ylabel("ms, send_task to decision (paced, 100 orders/s)")
    right.set_title("Order latency")
    right.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "e2e_bench.png", dpi=110)


if __name__ == "__main__":
    main()
