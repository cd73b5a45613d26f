"""The contended half of the lock benchmark: N processes looping on one key.

Each process acquires (blocking), INCRs a counter on a scratch node and
releases, for a fixed time; `measure_all_contended` runs every configuration
several times, interleaved, and reports throughput and max/min fairness.
Run through ``bench/lock_bench.py``.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

import redis

from locking import Redlock, RetryPolicy

#: TTL of every benchmark lease (long: the benchmark never lets one lapse).
TTL_MS = 10_000
#: Contended acquisitions of ours: the library's blocking acquire, retrying for as long as
#: it takes, with the given backoff.
CONTENDED_POLICIES = {
    "ours": RetryPolicy(attempts=1_000_000),  # the default backoff (1 ms, capped at 30 ms)
    # The same, each backoff a wait that a release ends (and the releaser giving way):
    "ours-wake": RetryPolicy(attempts=1_000_000, wake_on_release=True),
    "ours-2/50": RetryPolicy(attempts=1_000_000, base_delay_ms=2.0, max_delay_ms=50.0),
    # The defaults before the fairness fix:
    "ours-5/200": RetryPolicy(attempts=1_000_000, base_delay_ms=5.0, max_delay_ms=200.0),
}
CONTENDED_KINDS = ("ours", "ours-wake", "ours-2/50", "ours-5/200", "redis-py")


def contended_worker(
    kind: str,
    run: int,
    worker: int,
    urls: list[str],
    lock_port: int,
    scratch_port: int,
    seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    """Acquire, INCR on the scratch server, release; as often as possible for ``seconds``."""
    scratch = redis.Redis(host="127.0.0.1", port=scratch_port)
    counter = f"bench:contended:{kind}:{run}"
    count = 0
    policy = CONTENDED_POLICIES.get(kind)
    ours = Redlock(urls, retry=policy) if policy is not None else None
    single = redis.Redis(host="127.0.0.1", port=lock_port) if kind == "redis-py" else None
    barrier.wait()
    started = time.monotonic()
    end = started + seconds
    while time.monotonic() < end:
        if ours is not None:
            lease = ours.acquire("bench:contended", ttl_ms=TTL_MS)
            scratch.incr(counter)
            ours.release(lease)
        else:
            assert single is not None
            with single.lock("bench:contended", timeout=TTL_MS / 1000):  # blocking, sleep=0.1
                scratch.incr(counter)
        count += 1
    results.put((worker, count, time.monotonic() - started))
    if ours is not None:
        ours.close()
    if single is not None:
        single.close()
    scratch.close()


def measure_contended(
    kind: str,
    run: int,
    urls: list[str],
    lock_port: int,
    scratch_port: int,
    workers: int,
    seconds: float,
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    queue = context.Queue()
    processes = [
        context.Process(
            target=contended_worker,
            args=(kind, run, worker, urls, lock_port, scratch_port, seconds, barrier, queue),
        )
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        reports = [queue.get(timeout=seconds + 60) for _ in processes]
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    scratch = redis.Redis(host="127.0.0.1", port=scratch_port)
    try:
        incremented = int(scratch.get(f"bench:contended:{kind}:{run}") or 0)
    finally:
        scratch.close()
    counts = [count for _, count, _ in sorted(reports)]
    wall = max(elapsed for _, _, elapsed in reports)
    total = sum(counts)
    if incremented != total:
        raise RuntimeError(f"{kind}: {total} acquisitions but {incremented} increments")
    return {
        "workers": workers,
        "seconds": round(wall, 2),
        "acquisitions": total,
        "ops_per_s": round(total / wall),
        "per_worker": counts,
        "fairness_max_over_min": round(max(counts) / min(counts), 2) if min(counts) else None,
    }


def measure_all_contended(
    urls: list[str], lock_port: int, scratch_port: int, workers: int, seconds: float, repeats: int
) -> dict[str, Any]:
    """Run every contended configuration ``repeats`` times, interleaved; summarise by median."""
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CONTENDED_KINDS}
    for run in range(repeats):
        for kind in CONTENDED_KINDS:
            runs[kind].append(
                measure_contended(kind, run, urls, lock_port, scratch_port, workers, seconds)
            )
    summary = {}
    for kind, results in runs.items():
        fairness = [r["fairness_max_over_min"] or float("inf") for r in results]
        throughput = [r["ops_per_s"] for r in results]
        summary[kind] = {
            "ops_per_s": round(statistics.median(throughput)),
            "fairness_max_over_min": round(statistics.median(fairness), 2),
            "ops_per_s_runs": throughput,
            "fairness_runs": fairness,
            "runs": results,
        }
    return summary
