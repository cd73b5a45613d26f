"""The lock of two revisions side by side: uncontended acquire+release on the same nodes.

    ./dev bench bench/lock_ab.py --base 8653793 [--cycles 2000] [--rounds 6] [--fence]
        [--output bench/results/lock_ab.json]

Checks out ``--base`` into a temporary git worktree, starts three lock nodes, and
runs, round after round and alternating which goes first, one child process per
revision (this checkout and the base) that times ``cycles`` acquire+release pairs
of its own `locking.Redlock` on those nodes. Prints the per-round p50 of each and
the median of the per-round ratios (this / base), and writes
bench/results/lock_ab.json. Interleaving and the ratio per round are what make the
comparison fair on a noisy host: both revisions meet the same load.

The child also reports its own CPU time per cycle (time.process_time), less
sensitive to the load than its latency. And the nodes' side, per child, divided by
its cycles (warm-up included): the CPU time of the three redis-server processes
(INFO cpu, before and after), the time inside EVALSHA per call and the commands per
cycle (CONFIG RESETSTAT before, INFO commandstats after; not the login's SCRIPT LOAD
or AUTH).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from worker.demo.stack import LocalStack

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "lock_ab.json"
#: Cycles each child runs before it starts timing (connections, first calls).
WARM_UP_CYCLES = 200
#: Commands that are not the lock's work per cycle (login, the bench's own probes).
NOT_LOCK_WORK = {"auth", "select", "script", "hello", "client", "config", "info", "ping"}

#: Run in the child, with the revision's tree first on sys.path.
CHILD = """
import json, sys, time
from locking import Redlock
urls, cycles, fence = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
lock = Redlock(urls)
for _ in range(int(sys.argv[4])):  # connect, warm up
    lock.release(lock.acquire("ab", ttl_ms=5000, fence=fence))
samples = []
cpu_started = time.process_time()
for _ in range(cycles):
    started = time.perf_counter()
    lock.release(lock.acquire("ab", ttl_ms=5000, fence=fence))
    samples.append((time.perf_counter() - started) * 1e6)
cpu_us = (time.process_time() - cpu_started) * 1e6 / cycles
samples.sort()
print(json.dumps({"p50_us": samples[len(samples) // 2],
                  "p99_us": samples[int(len(samples) * 0.99)],
                  "client_cpu_us_per_cycle": cpu_us}))
"""


def run_child(tree: Path, urls: list[str], cycles: int, fence: bool) -> dict[str, float]:
    """Time ``cycles`` acquire+release pairs with the lock of ``tree``; return p50/p99 in us."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r})\n" + CHILD
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            json.dumps(urls),
            str(cycles),
            "1" if fence else "0",
            str(WARM_UP_CYCLES),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def server_cpu_s(clients: list[redis.Redis]) -> float:
    """Return the CPU time the nodes' processes have used so far, in seconds, all together."""
    total = 0.0
    for client in clients:
        cpu: dict[str, float] = client.info("cpu")
        total += cpu["used_cpu_user"] + cpu["used_cpu_sys"]
    return total


def server_cost(clients: list[redis.Redis], cpu_before_s: float, cycles: int) -> dict[str, float]:
    """Return the nodes' cost per cycle since the last CONFIG RESETSTAT.

    CPU µs (INFO cpu, the processes' own accounting: includes reading and writing the
    sockets, which commandstats leaves out), µs inside EVALSHA per call (scripts'
    own cost, Lua and the commands they call), and commands per cycle (those a
    script calls count too: commandstats lists them one by one).
    """
    calls = evalsha_usec = evalsha_calls = 0.0
    for client in clients:
        stats: dict[str, dict[str, float]] = client.info("commandstats")
        for name, row in stats.items():
            command = name.removeprefix("cmdstat_").split("|")[0]
            if command in NOT_LOCK_WORK:
                continue
            calls += row["calls"]
            if command == "evalsha":
                evalsha_usec += row["usec"]
                evalsha_calls += row["calls"]
    return {
        "server_cpu_us_per_cycle": (server_cpu_s(clients) - cpu_before_s) * 1e6 / cycles,
        "evalsha_us_per_call": evalsha_usec / evalsha_calls if evalsha_calls else 0.0,
        "server_calls_per_cycle": calls / cycles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", required=True, help="the revision to compare against")
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fence", action="store_true", help="fenced acquisitions")
    parser.add_argument("--output", type=Path, default=RESULTS)
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
                nodes = stack.start_lock_nodes(3)
                urls = [node.url for node in nodes]
                clients = [redis.Redis(host="127.0.0.1", port=node.port) for node in nodes]
                trees = {"this": ROOT, "base": base_tree}
                for round_index in range(args.rounds):
                    order = ["this", "base"] if round_index % 2 == 0 else ["base", "this"]
                    for name in order:
                        for client in clients:
                            client.config_resetstat()
                        cpu_before_s = server_cpu_s(clients)
                        row = run_child(trees[name], urls, args.cycles, args.fence)
                        row.update(server_cost(clients, cpu_before_s, args.cycles + WARM_UP_CYCLES))
                        rows[name].append(row)
                for client in clients:
                    client.close()
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False
            )
    pairs = list(zip(rows["this"], rows["base"], strict=True))
    report: dict[str, Any] = {
        "base": args.base,
        "fence": args.fence,
        "cycles": args.cycles,
        "load_average": os.getloadavg(),
        "rounds": rows,
        "ratio_p50_median": statistics.median(t["p50_us"] / b["p50_us"] for t, b in pairs),
        "ratio_client_cpu_median": statistics.median(
            t["client_cpu_us_per_cycle"] / b["client_cpu_us_per_cycle"] for t, b in pairs
        ),
        "ratio_server_cpu_median": statistics.median(
            t["server_cpu_us_per_cycle"] / b["server_cpu_us_per_cycle"] for t, b in pairs
        ),
        "ratio_evalsha_us_median": statistics.median(
            t["evalsha_us_per_call"] / b["evalsha_us_per_call"] for t, b in pairs
        ),
    }
    for name in ("this", "base"):
        p50s = [round(row["p50_us"], 1) for row in rows[name]]
        client_cpu = [round(row["client_cpu_us_per_cycle"], 1) for row in rows[name]]
        cpu = [round(row["server_cpu_us_per_cycle"], 1) for row in rows[name]]
        evalsha = [round(row["evalsha_us_per_call"], 2) for row in rows[name]]
        calls = rows[name][0]["server_calls_per_cycle"]
        print(f"{name:5} p50 us per round: {p50s}")
        print(f"{name:5} client CPU us per cycle: {client_cpu}")
        print(f"{name:5} nodes' CPU us per cycle (3 nodes): {cpu}; commands per cycle {calls:.2f}")
        print(f"{name:5} us inside EVALSHA per call: {evalsha}")
    print(f"median of per-round p50 ratios (this / base): {report['ratio_p50_median']:.2f}")
    for key in ("ratio_client_cpu_median", "ratio_server_cpu_median", "ratio_evalsha_us_median"):
        print(f"{key} (this / base, per round): {report[key]:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
