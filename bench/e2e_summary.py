"""Medians of an end-to-end run's rounds, their ratio to the floor, and the printed table."""

from __future__ import annotations

import statistics
from typing import Any


def _shape(result: dict[str, Any]) -> tuple[int, int, str]:
    config = result["config"]
    return (
        int(config.get("workers", 1)),
        int(config["processes"]),
        str(config.get("feed", "prefilled")),
    )


def _median_by_key(results: list[dict[str, Any]], field: str) -> dict[str, float]:
    keys = {key for r in results for key in r.get(field, {})}
    return {
        key: statistics.median(float(r[field].get(key, 0.0)) for r in results)
        for key in sorted(keys)
    }


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Return the medians of each configuration's rounds, and its ratio to the floor
    of the same shape (workers, processes, feed)."""
    floor = {
        _shape(results[0]): statistics.median(float(r["orders_per_s"]) for r in results)
        for results in runs.values()
        if results and results[0]["config"]["noop"]
    }
    summary: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        if not results:
            continue
        shape = _shape(results[0])
        median = statistics.median(float(r["orders_per_s"]) for r in results)
        p50 = [r["latency_p50_ms"] for r in results if r["latency_p50_ms"] is not None]
        p99 = [r["latency_p99_ms"] for r in results if r["latency_p99_ms"] is not None]
        summary[name] = {
            "orders_per_s": median,
            "ratio_to_floor": median / floor[shape] if shape in floor else None,
            "latency_p50_ms": statistics.median(p50) if p50 else None,
            "latency_p99_ms": statistics.median(p99) if p99 else None,
            "busy_cores": statistics.median(float(r.get("busy_cores", 0.0)) for r in results),
            "stack_busy_cores": statistics.median(
                float(r.get("stack_busy_cores", 0.0)) for r in results
            ),
            "cpu_ms_per_order": _median_by_key(results, "cpu_ms_per_order"),
        }
    return summary


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n{'configuration':36s} {'orders/s':>9s} {'x floor':>8s} {'p50 ms':>8s} {'p99 ms':>8s}"
        f" {'host busy':>9s} {'stack busy':>10s} {'stack cpu ms':>12s}"
    )
    for name, row in summary.items():
        cpu = row["cpu_ms_per_order"]
        cells = [
            row["orders_per_s"],
            row["ratio_to_floor"],
            row["latency_p50_ms"],
            row["latency_p99_ms"],
            row["busy_cores"],
            row["stack_busy_cores"],
            cpu.get("stack, all roles"),
        ]
        print(
            f"{name:36s} "
            + " ".join("       -" if v is None else f"{float(v):8.2f}" for v in cells)
        )
