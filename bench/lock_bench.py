"""Lock latency and contended throughput: our Redlock against the usual Python locks, in one run.

    ./dev bench bench/lock_bench.py [--cycles 500] [--rounds 8] [--seconds 5] [--repeats 3]

Starts three local redis-server lock nodes (and a fourth, unrelated one for the
contended critical section) and measures, side by side:

* uncontended acquire + release, one process: latency p50/p99 and ops/s of
  - ours: ``locking.Redlock`` over the 3 nodes,
  - redis-py: ``redis.Redis(...).lock(name, timeout=...)`` on node 1 only (one node,
    no quorum: the floor any 3-node lock is compared against),
  - pottery: ``pottery.Redlock(key=..., masters={3 clients}, auto_release_time=...)``,
  - redlock-py: ``redlock.Redlock([3 URLs])`` when it is installed (it is not part of
    the bench extras: ``.venv/bin/pip install redlock-py==1.0.8`` adds it),
  - two floors that are not locks: two round trips of GET on raw sockets (hiredis
    parser) to one node, and to three nodes pipelined like ours; no Python client
    of that many nodes can beat them;
  the contenders take turns of a few cycles each (the order rotating), for
  several rounds, so that the noise of a shared machine hits all of them alike;
* contended: N processes on one key for S seconds each, every holder doing one
  INCR on the fourth server: acquisitions/s and per-worker fairness (max/min), for
  ours (the library's blocking ``acquire``: default backoff 1/30 ms; the same with
  ``wake_on_release``, each backoff a wait that a release ends; 2/50 ms; and
  5/200 ms, the defaults before) and
  redis-py's Lock, all blocking until they get the lock; the configurations run
  interleaved, --repeats times, and the table shows the median run of each.

Prints a table and writes bench/results/lock_bench.json.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
import redis

from bench.lock_contention import CONTENDED_POLICIES, TTL_MS, measure_all_contended
from locking import Redlock
from worker.demo.stack import LocalStack
from worker.demo.stats import percentile

RESULTS = Path(__file__).with_name("results") / "lock_bench.json"
#: Share of the uncontended cycles each contender runs per block (pottery is ~30x slower).
CYCLE_SHARE = {
    "ours": 1.0,
    "redis-py": 1.0,
    "pottery": 0.1,
    "redlock-py": 0.5,
    "floor-1-node": 1.0,
    "floor-3-nodes": 1.0,
}
TARGETS = {
    "ours_p50_over_redis_py_p50": ("<=", 0.75),
    "pottery_p50_over_ours_p50": (">=", 8.0),
    "ours_contended_over_redis_py_contended": (">=", 1.0),
    "ours_fairness_max_over_min": ("<=", 2.0),
}


# -- uncontended ------------------------------------------------------------------------------


Contender = tuple[Callable[[], None], Callable[[], None]]


def uncontended_cycles(
    urls: list[str], ports: list[int]
) -> tuple[dict[str, Contender], Callable[[], None], list[str]]:
    """Return {name: (one cycle, clean-up)} of every available contender, a final clean-up
    and the contenders that were skipped."""
    clients = [redis.Redis(host="127.0.0.1", port=port) for port in ports]
    contenders: dict[str, Contender] = {}
    skipped: list[str] = []

    ours = Redlock(urls)

    def ours_cycle() -> None:
        ours.release(ours.acquire("bench:ours", ttl_ms=TTL_MS))

    contenders["ours"] = (ours_cycle, ours.close)

    single = clients[0]

    def redis_py_cycle() -> None:
        with single.lock("bench:redis-py", timeout=TTL_MS / 1000):
            pass

    contenders["redis-py"] = (redis_py_cycle, lambda: None)

    try:
        from pottery import Redlock as PotteryRedlock

        pottery_lock = PotteryRedlock(
            key="bench:pottery", masters=set(clients), auto_release_time=TTL_MS / 1000
        )

        def pottery_cycle() -> None:
            if not pottery_lock.acquire():
                raise RuntimeError("pottery did not acquire an uncontended lock")
            pottery_lock.release()

        contenders["pottery"] = (pottery_cycle, lambda: None)
    except ImportError:
        skipped.append("pottery (not installed: run through ./dev bench, which installs it)")

    try:
        import redlock  # redlock-py

        manager = redlock.Redlock(urls, retry_count=1)

        def redlock_py_cycle() -> None:
            held = manager.lock("bench:redlock-py", TTL_MS)
            if not held:
                raise RuntimeError("redlock-py did not acquire an uncontended lock")
            manager.unlock(held)

        contenders["redlock-py"] = (redlock_py_cycle, lambda: None)
    except ImportError:
        skipped.append("redlock-py (not installed: .venv/bin/pip install redlock-py==1.0.8)")

    sockets = [socket.create_connection(("127.0.0.1", port)) for port in ports]
    for sock in sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    get = b"*2\r\n$3\r\nGET\r\n$10\r\nbench:none\r\n"

    def floor(group: list[socket.socket]) -> Callable[[], None]:
        readers = [hiredis.Reader() for _ in group]

        def two_round_trips() -> None:
            for _ in range(2):
                for sock in group:
                    sock.sendall(get)
                for sock, reader in zip(group, readers, strict=True):
                    reply = reader.gets()
                    while reply is False:
                        reader.feed(sock.recv(65536))
                        reply = reader.gets()

        return two_round_trips

    contenders["floor-1-node"] = (floor(sockets[:1]), lambda: None)
    contenders["floor-3-nodes"] = (floor(sockets), lambda: None)

    def close_clients() -> None:
        for client in clients:
            client.close()
        for sock in sockets:
            sock.close()

    return contenders, close_clients, skipped


def run_block(cycle: Callable[[], None], count: int) -> list[int]:
    """Run ``count`` cycles; return each one's duration in nanoseconds."""
    durations = []
    clock = time.perf_counter_ns
    for _ in range(count):
        started = clock()
        cycle()
        durations.append(clock() - started)
    return durations


def measured_percentile(sorted_values: list[int], fraction: float) -> float:
    """Return `percentile` (nearest rank) of a non-empty sample."""
    value = percentile(sorted_values, fraction)
    assert value is not None, "no sample"
    return float(value)


def measure_uncontended(
    urls: list[str], ports: list[int], cycles: int, rounds: int, block: int
) -> tuple[dict[str, Any], list[str]]:
    contenders, close_clients, skipped = uncontended_cycles(urls, ports)
    names = list(contenders)
    samples: dict[str, list[int]] = {name: [] for name in names}
    round_p50: dict[str, list[float]] = {name: [] for name in names}
    sizes = {name: max(1, round(block * CYCLE_SHARE[name])) for name in names}
    try:
        for name in names:  # warm-up: connections, script loading, first-call costs
            run_block(contenders[name][0], max(20, int(cycles * CYCLE_SHARE[name] // 5)))
        for _ in range(rounds):
            in_round: dict[str, list[int]] = {name: [] for name in names}
            gc.collect()
            # Small blocks, the order rotating: a burst of noise from the rest of the
            # machine lands on every contender rather than on one whole block.
            for step in range(max(1, cycles // block)):
                shift = step % len(names)
                for name in names[shift:] + names[:shift]:
                    in_round[name] += run_block(contenders[name][0], sizes[name])
            for name in names:
                samples[name] += in_round[name]
                round_p50[name].append(
                    round(measured_percentile(sorted(in_round[name]), 0.5) / 1000, 1)
                )
    finally:
        for _, close in contenders.values():
            close()
        close_clients()
    results = {}
    for name in names:
        values = sorted(samples[name])
        results[name] = {
            "cycles": len(values),
            "p50_us": round(measured_percentile(values, 0.50) / 1000, 1),
            "p99_us": round(measured_percentile(values, 0.99) / 1000, 1),
            "ops_per_s": round(len(values) / (sum(values) / 1e9)),
            "round_p50_us": round_p50[name],
        }
    return results, skipped


# -- report -----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("redis", "hiredis", "pottery", "redlock-py"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout
    found["redis-server"] = server.split("v=")[1].split()[0] if "v=" in server else server
    return found


def ratios(uncontended: dict[str, Any], contended: dict[str, Any]) -> dict[str, float | None]:
    ours, single = uncontended["ours"]["p50_us"], uncontended["redis-py"]["p50_us"]
    pottery = uncontended.get("pottery", {}).get("p50_us")
    return {
        "ours_p50_over_redis_py_p50": round(ours / single, 2),
        "pottery_p50_over_ours_p50": round(pottery / ours, 1) if pottery else None,
        "ours_contended_over_redis_py_contended": round(
            contended["ours"]["ops_per_s"] / contended["redis-py"]["ops_per_s"], 2
        ),
        "ours_fairness_max_over_min": contended["ours"]["fairness_max_over_min"],
        "ours_wake_contended_over_ours_contended": round(
            contended["ours-wake"]["ops_per_s"] / contended["ours"]["ops_per_s"], 2
        ),
        "ours_wake_fairness_max_over_min": contended["ours-wake"]["fairness_max_over_min"],
        "ours_2_50_fairness_max_over_min": contended["ours-2/50"]["fairness_max_over_min"],
        "ours_5_200_fairness_max_over_min": contended["ours-5/200"]["fairness_max_over_min"],
        "redis_py_fairness_max_over_min": contended["redis-py"]["fairness_max_over_min"],
    }


def verdicts(found: dict[str, float | None]) -> dict[str, str]:
    out = {}
    for name, (op, target) in TARGETS.items():
        value = found.get(name)
        met = value is not None and (value <= target if op == "<=" else value >= target)
        out[name] = f"{'met' if met else 'MISSED'} ({value} {op} {target})"
    return out


def print_report(report: dict[str, Any]) -> None:
    rounds = report["params"]["rounds"]
    print(f"\nUncontended acquire+release, {rounds} rounds of interleaved turns")
    print(f"{'lock':<15}{'cycles':>8}{'p50 us':>10}{'p99 us':>10}{'ops/s':>10}  per-round p50")
    for name, row in report["uncontended"].items():
        print(
            f"{name:<15}{row['cycles']:>8}{row['p50_us']:>10}{row['p99_us']:>10}"
            f"{row['ops_per_s']:>10}  {row['round_p50_us']}"
        )
    params = report["params"]
    print(
        f"\nContended: {params['workers']} processes on one key, {params['seconds']} s per run, "
        f"{params['repeats']} interleaved runs (median; then each run)"
    )
    print(f"{'lock':<15}{'ops/s':>10}{'max/min':>10}  ops/s per run, max/min per run")
    for name, row in report["contended"].items():
        print(
            f"{name:<15}{row['ops_per_s']:>10}{row['fairness_max_over_min']!s:>10}"
            f"  {row['ops_per_s_runs']}, {row['fairness_runs']}"
        )
    print("\nRatios:", json.dumps(report["ratios"]))
    for name, verdict in report["verdicts"].items():
        print(f"  {name}: {verdict}")
    for skipped in report["skipped"]:
        print(f"  skipped: {skipped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=500, help="cycles per round (ours)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (each reported)")
    parser.add_argument("--block", type=int, default=20, help="cycles per turn (ours)")
    parser.add_argument("--seconds", type=float, default=5.0, help="contended run length")
    parser.add_argument("--workers", type=int, default=8, help="contended processes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each contended config")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    started = time.monotonic()
    load_before = os.getloadavg()
    with LocalStack() as stack, LocalStack() as scratch_stack:
        nodes = stack.start_lock_nodes(3)
        scratch_nodes = scratch_stack.start_lock_nodes(1)
        urls = [node.url for node in nodes]
        ports = [node.port for node in nodes]
        uncontended, skipped = measure_uncontended(
            urls, ports, args.cycles, args.rounds, args.block
        )
        contended = measure_all_contended(
            urls, ports[0], scratch_nodes[0].port, args.workers, args.seconds, args.repeats
        )
    found = ratios(uncontended, contended)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "versions": versions(),
        },
        "params": {
            "cycles_per_round": {n: int(args.cycles * s) for n, s in CYCLE_SHARE.items()},
            "cycles_per_turn": {n: max(1, round(args.block * s)) for n, s in CYCLE_SHARE.items()},
            "rounds": args.rounds,
            "ttl_ms": TTL_MS,
            "workers": args.workers,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "ours_contended_retry": {k: repr(v) for k, v in CONTENDED_POLICIES.items()},
            "redis_py_contended": "lock(timeout=10) blocking, sleep=0.1 (its default)",
        },
        "uncontended": uncontended,
        "contended": contended,
        "ratios": found,
        "verdicts": verdicts(found),
        "skipped": skipped,
        "runtime_s": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"\nwrote {args.output} in {report['runtime_s']} s")


if __name__ == "__main__":
    main()
