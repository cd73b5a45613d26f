"""Process bodies of the multi-process lock tests, and the parent's side of running them.

Children are started with the ``spawn`` method (they import this module afresh),
share nothing with the parent but the node URLs, and report through a scratch
redis-server: counters, lists of what happened inside critical sections, and a
start barrier so every child hammers the lock at the same time.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from locking import Redlock, RetryPolicy

#: Contended children retry for as long as the test allows, with short sleeps.
PATIENT = RetryPolicy(attempts=1_000_000, base_delay_ms=1.0, max_delay_ms=20.0, deadline_ms=60_000)
#: How long a child waits at the start barrier before giving up.
BARRIER_TIMEOUT_S = 30.0


def _scratch(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port)


@contextmanager
def _participant(
    urls: list[str], scratch_port: int, parties: int
) -> Iterator[tuple[redis.Redis, Redlock]]:
    """A child's scratch client and Redlock, opened after the start barrier, closed at the end."""
    scratch = _scratch(scratch_port)
    redlock = Redlock(urls)
    try:
        _barrier(scratch, parties)
        yield scratch, redlock
    finally:
        redlock.close()
        scratch.close()


def _barrier(scratch: redis.Redis, parties: int) -> None:
    """Wait until ``parties`` children have arrived, so the contention starts all at once."""
    scratch.incr("barrier")
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while int(scratch.get("barrier") or 0) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("the other workers never reached the start barrier")
        time.sleep(0.005)


def exclusion_worker(
    urls: list[str], scratch_port: int, worker: int, parties: int, iterations: int, hold_s: float
) -> None:
    """Read-modify-write a shared counter under the lock; count any overlap of holders."""
    with _participant(urls, scratch_port, parties) as (scratch, redlock):
        for _ in range(iterations):
            with redlock.lock("exclusion", ttl_ms=5000, retry=PATIENT) as lease:
                if scratch.incr("inside") != 1:
                    scratch.incr("overlaps")
                value = int(scratch.get("counter") or 0)
                time.sleep(hold_s)  # widen the race window of the read-modify-write
                scratch.set("counter", value + 1)
                scratch.rpush("holders", worker)
                lease.check()
                scratch.decr("inside")


def fence_worker(
    urls: list[str], scratch_port: int, worker: int, parties: int, iterations: int
) -> None:
    """Append each fenced lease's fence to a list, inside its critical section."""
    with _participant(urls, scratch_port, parties) as (scratch, redlock):
        for _ in range(iterations):
            with redlock.lock("fenced", ttl_ms=5000, fence=True, retry=PATIENT) as lease:
                scratch.rpush("fences", lease.fence or 0)
                scratch.rpush("fence-holders", worker)


def multi_resource_worker(
    urls: list[str],
    scratch_port: int,
    worker: int,
    parties: int,
    resources: Sequence[str],
    iterations: int,
) -> None:
    """Lock several resources at once (each worker names them in its own order)."""
    with _participant(urls, scratch_port, parties) as (scratch, redlock):
        for _ in range(iterations):
            with redlock.lock(resources, ttl_ms=5000, retry=PATIENT):
                if scratch.incr("inside") != 1:
                    scratch.incr("overlaps")
                scratch.hincrby("progress", str(worker), 1)
                scratch.decr("inside")


def delete_hammer(ports: list[int], key: str) -> None:
    """Delete ``key`` on the given nodes as fast as possible until terminated."""
    nodes = [redis.Redis(host="127.0.0.1", port=port) for port in ports]
    pipes = []
    for node in nodes:
        pipe = node.pipeline(transaction=False)
        for _ in range(50):
            pipe.delete(key)
        pipes.append(pipe)
    while True:
        for pipe in pipes:
            pipe.execute(raise_on_error=False)
            for _ in range(50):
                pipe.delete(key)


def run_processes(
    target: Any, argument_lists: Sequence[tuple[Any, ...]], *, timeout_s: float
) -> None:
    """Run one spawned process per argument tuple; fail unless all exit 0 within the timeout."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=args) for args in argument_lists]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout_s
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        stuck = [process.pid for process in processes if process.is_alive()]
        assert not stuck, f"workers {stuck} did not finish within {timeout_s} s"
        codes = [process.exitcode for process in processes]
        assert codes == [0] * len(processes), f"worker exit codes: {codes}"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
