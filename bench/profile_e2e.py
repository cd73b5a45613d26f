"""Sample where a running worker spends its time, with py-spy, on one configuration.

    .venv/bin/pip install py-spy
    ./dev bench bench/profile_e2e.py --workers 2 --processes 2 --scenario hot --orders 4000

Pre-fills the queue, starts the workers (ours unless ``--app``), and once
consumption is under way records every pool process and every main process
with ``py-spy record --format raw`` (``--native`` adds C frames) for ``--seconds``.
Prints, per role, the functions with the most samples on the stack (inclusive)
and at the top of the stack (self), and writes the collapsed stacks of each role
to ``bench/results/profile-<role>.txt`` for a flame graph tool. py-spy counts a
process that is runnable but waiting for a core like one that runs: on a
saturated host the shares are of on-CPU plus run-queue time.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

from bench.e2e_bench import payloads
from bench.e2e_probes import wait_consumption_started, wait_decided
from tasks.db import create_db_engine
from tasks.migrate import upgrade
from tests.pg import create_database, drop_database
from tests.sale import enqueue, producer, seed_products
from worker.demo.stack import LocalStack

RESULTS = Path(__file__).with_name("results")


def top_frames(
    collapsed: Path, limit: int
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Return (inclusive, self) shares of samples per frame of a py-spy raw file."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [frame.split(" (")[0] + " " + frame.split("/")[-1].rstrip(")")
                  for frame in stack.split(";")]  # fmt: skip
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return (
        [(frame, n / total) for frame, n in inclusive.most_common(limit)],
        [(frame, n / total) for frame, n in own.most_common(limit)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--scenario", default="hot")
    parser.add_argument("--orders", type=int, default=4000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--app", default="worker")
    parser.add_argument("--native", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the workers")
    args = parser.parse_args()
    py_spy = Path(sys.executable).with_name("py-spy")
    url = create_database()
    try:
        upgrade(url)
        engine = create_db_engine(url)
        stock, batch = payloads(args.scenario, args.orders)
        seed_products(engine, stock)
        with LocalStack(env={"DATABASE_URL": url}) as stack:
            stack.start_lock_nodes(3)
            broker = stack.start_broker()
            ids = enqueue(producer(broker.url), batch[: args.orders])
            extra = dict(item.split("=", 1) for item in args.env)
            for _ in range(args.workers):
                stack.start_worker(
                    concurrency=args.processes, app_module=args.app, extra_env=extra, wait=False
                )
            wait_consumption_started(broker.url, len(ids))
            time.sleep(0.5)
            targets = [("main", worker.pid) for worker in stack.workers] + [
                ("pool", pid) for worker in stack.workers for pid in worker.pool_pids()
            ]
            recorders = []
            for role, pid in targets:
                out = RESULTS / f"profile-{role}-{pid}.txt"
                command = [str(py_spy), "record", "--pid", str(pid), "--format", "raw",
                           "--duration", str(int(args.seconds)), "--rate", "200",
                           "--output", str(out), "--nonblocking"]  # fmt: skip
                if args.native:
                    command.append("--native")
                recorders.append((role, out, subprocess.Popen(command, stdout=subprocess.DEVNULL)))
            for _, _, recorder in recorders:
                recorder.wait()
            wait_decided(engine, len(ids))
        engine.dispose()
        by_role: dict[str, list[Path]] = collections.defaultdict(list)
        for role, out, _ in recorders:
            by_role[role].append(out)
        for role, files in by_role.items():
            merged = RESULTS / f"profile-{role}.txt"
            merged.write_text("".join(f.read_text() for f in files if f.exists()))
            for f in files:
                f.unlink(missing_ok=True)
            inclusive, own = top_frames(merged, args.top)
            print(f"\n== {role} processes: inclusive (share of samples) ==")
            for frame, share in inclusive:
                print(f"{share:6.1%}  {frame}")
            print(f"== {role} processes: self ==")
            for frame, share in own:
                print(f"{share:6.1%}  {frame}")
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
