"""The lock of two revisions side by side: uncontended acquire+release on the same nodes.

    ./dev bench bench/lock_ab.py --base 8653793 [--cycles 2000] [--rounds 6] [--fence]

Checks out ``--base`` into a temporary git worktree, starts three lock nodes, and
runs, round after round and alternating which goes first, one child process per
revision (this checkout and the base) that times ``cycles`` acquire+release pairs
of its own `locking.Redlock` on those nodes. Prints the per-round p50 of each and
the median of the per-round ratios (this / base), and writes
bench/results/lock_ab.json. Interleaving and the ratio per round are what make the
comparison fair on a noisy host: both revisions meet the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from worker.demo.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "lock_ab.json"

#: Run in the child, with the revision's tree first on sys.path.
CHILD = """
import json, sys, time
from locking import Redlock
urls, cycles, fence = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
lock = Redlock(urls)
for _ in range(200):  # connect, warm up
    lock.release(lock.acquire("ab", ttl_ms=5000, fence=fence))
samples = []
for _ in range(cycles):
    started = time.perf_counter()
    lock.release(lock.acquire("ab", ttl_ms=5000, fence=fence))
    samples.append((time.perf_counter() - started) * 1e6)
samples.sort()
print(json.dumps({"p50_us": samples[len(samples) // 2],
                  "p99_us": samples[int(len(samples) * 0.99)]}))
"""


def run_child(tree: Path, urls: list[str], cycles: int, fence: bool) -> dict[str, float]:
    """Time ``cycles`` acquire+release pairs with the lock of ``tree``; return p50/p99 in us."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r})\n" + CHILD
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(urls), str(cycles), "1" if fence else "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fence", action="store_true", help="fenced acquisitions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base_tree), args.base],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            rows: dict[str, list[dict[str, float]]] = {"this": [], "base": []}
            with LocalStack() as stack:
                urls = [node.url for node in stack.start_lock_nodes(3)]
                trees = {"this": ROOT, "base": base_tree}
                for round_index in range(args.rounds):
                    order = ["this", "base"] if round_index % 2 == 0 else ["base", "this"]
                    for name in order:
                        rows[name].append(run_child(trees[name], urls, args.cycles, args.fence))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False
            )
    ratios = [t["p50_us"] / b["p50_us"] for t, b in zip(rows["this"], rows["base"], strict=True)]
    report: dict[str, Any] = {
        "base": args.base,
        "fence": args.fence,
        "cycles": args.cycles,
        "rounds": rows,
        "ratio_p50_median": statistics.median(ratios),
    }
    for name in ("this", "base"):
        p50s = [row["p50_us"] for row in rows[name]]
        print(f"{name:5} p50 us per round: {[round(v, 1) for v in p50s]}")
    print(f"median of per-round p50 ratios (this / base): {report['ratio_p50_median']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
