"""Who held a SKU's lock when, on one clock, and the check that no two leases overlapped.

Real `Redlock` client processes ("probes") contend for a SKU's lock next to the
real workers, through a worker group's links (tests/chaos/links.py), and write
down every lease they held: the instant ``acquire`` returned and the instant
they started releasing, both from `time.monotonic` (CLOCK_MONOTONIC, one clock
for every process on Linux), with the lease's validity end and its fence. They
take the same lock keys and fence counter as the workers (resource ``sku:<SKU>``,
default prefixes), so their fences interleave with the workers' and must still
rise in grant order.

`overlaps` and `fence_inversions` judge the records; tests/chaos/test_lease_checker.py
shows on crafted inputs that they do flag overlapping leases and fences out of order.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from locking import NotAcquired, Redlock, RetryPolicy

#: A probe retries briefly, then gives the workers a turn before its next attempt.
PROBE_RETRY = RetryPolicy(attempts=20, base_delay_ms=1.0, max_delay_ms=10.0)
#: Bound on a probe's life, so that a test that dies early leaves no process behind for long.
PROBE_MAX_S = 120.0


@dataclass(frozen=True)
class Hold:
    """One lease a holder had, on the monotonic clock (seconds).

    :param holder: who held it (probe name).
    :param granted_s: when ``acquire`` returned the lease.
    :param released_s: when the holder started to release it (it stopped using it).
    :param valid_until_s: when the lease's validity ended, had it not been released.
    :param fence: the lease's fencing token.
    """

    holder: str
    granted_s: float
    released_s: float
    valid_until_s: float
    fence: int | None

    @property
    def end_s(self) -> float:
        """When the holder's claim ended: its release, or its validity if that came first."""
        return min(self.released_s, self.valid_until_s)


def overlaps(holds: Iterable[Hold]) -> list[tuple[Hold, Hold]]:
    """Return every pair of leases (on one resource) whose held intervals intersect."""
    found: list[tuple[Hold, Hold]] = []
    still_held: list[Hold] = []
    for hold in sorted(holds, key=lambda h: h.granted_s):
        still_held = [earlier for earlier in still_held if earlier.end_s > hold.granted_s]
        found += [(earlier, hold) for earlier in still_held]
        still_held.append(hold)
    return found


def fence_inversions(holds: Iterable[Hold]) -> list[tuple[Hold, Hold]]:
    """Return each pair of consecutive grants (one resource) whose fence did not rise.

    Fences must strictly increase in grant order; a missing fence counts as an inversion.
    """
    ordered = sorted(holds, key=lambda h: h.granted_s)
    return [
        (a, b)
        for a, b in itertools.pairwise(ordered)
        if a.fence is None or b.fence is None or b.fence <= a.fence
    ]


def probe(
    urls: list[str],
    resource: str,
    holder: str,
    out_path: str,
    stop_path: str,
    ttl_ms: int,
    hold_s: float,
    pause_s: float,
    fenced: bool,
) -> None:
    """Take and release leases on ``resource`` until ``stop_path`` exists.

    Each lease held is one JSON line in ``out_path`` (the fields of `Hold`); the
    last line counts the attempts that got no lease (``{"refused": n}``).

    :param ttl_ms: lease TTL.
    :param hold_s: how long each lease is held.
    :param pause_s: the pause after each release (and each refusal).
    :param fenced: take fenced leases (as the workers do).
    """
    redlock = Redlock(urls)
    refused = 0
    deadline_s = time.monotonic() + PROBE_MAX_S
    try:
        with open(out_path, "a") as out:
            while not Path(stop_path).exists() and time.monotonic() < deadline_s:
                try:
                    lease = redlock.acquire(
                        resource, ttl_ms=ttl_ms, fence=fenced, retry=PROBE_RETRY
                    )
                except NotAcquired:
                    refused += 1
                    time.sleep(pause_s)
                    continue
                granted_s = time.monotonic()
                time.sleep(hold_s)
                released_s = time.monotonic()
                redlock.release(lease, confirm=False)
                hold = Hold(holder, granted_s, released_s, lease.valid_until_s, lease.fence)
                out.write(json.dumps(asdict(hold)) + "\n")
                out.flush()
                time.sleep(pause_s)
            out.write(json.dumps({"refused": refused}) + "\n")
    finally:
        redlock.close()


class Probes:
    """The probe processes of one test (spawned: nothing shared but their arguments).

    :param workdir: where each probe writes its records.
    :param resource: the lock resource every probe contends for.
    :param ttl_ms: lease TTL of the probes.
    :param fenced: whether the probes take fenced leases, as the workers do.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        resource: str = "sku:HOT",
        ttl_ms: int = 1000,
        hold_s: float = 0.005,
        pause_s: float = 0.05,
        fenced: bool = True,
    ) -> None:
        self.workdir = workdir
        self.stop_path = workdir / "probes.stop"
        self.resource = resource
        self.ttl_ms = ttl_ms
        self.hold_s = hold_s
        self.pause_s = pause_s
        self.fenced = fenced
        self.refused: dict[str, int] = {}
        self._processes: list[tuple[str, BaseProcess]] = []
        self._context = multiprocessing.get_context("spawn")

    def start(self, urls: Sequence[str], holder: str) -> None:
        """Start one probe named ``holder`` that reaches the lock nodes through ``urls``."""
        args = (
            list(urls), self.resource, holder, str(self._out(holder)), str(self.stop_path),
            self.ttl_ms, self.hold_s, self.pause_s, self.fenced,
        )  # fmt: skip
        process = self._context.Process(target=probe, args=args, daemon=True)
        process.start()
        self._processes.append((holder, process))

    def stop(self, *, timeout_s: float = 15.0) -> list[Hold]:
        """Stop every probe, fail unless each exited cleanly, and return all their holds."""
        self.stop_path.touch()
        deadline_s = time.monotonic() + timeout_s
        try:
            for _, process in self._processes:
                process.join(max(0.0, deadline_s - time.monotonic()))
            codes = {holder: process.exitcode for holder, process in self._processes}
            assert all(code == 0 for code in codes.values()), f"probe exit codes: {codes}"
        finally:
            self.kill()
        holds: list[Hold] = []
        for holder, _ in self._processes:
            for line in self._out(holder).read_text().splitlines():
                record = json.loads(line)
                if "refused" in record:
                    self.refused[holder] = int(record["refused"])
                else:
                    holds.append(Hold(**record))
        return holds

    def kill(self) -> None:
        """Kill any probe still running (each by its own pid)."""
        for _, process in self._processes:
            if process.is_alive():
                process.kill()
                process.join()

    def _out(self, holder: str) -> Path:
        return self.workdir / f"probe-{holder}.jsonl"
