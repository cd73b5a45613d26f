"""``flashsale demo`` as a user runs it: a real subprocess, its JSON, its exit, what it leaves.

The test process makes itself the child subreaper of the demo's descendants: any
process the demo started and did not stop becomes the test's own child when the
demo exits, whatever its session or environment, and fails the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.db import create_db_engine, session_factory
from tasks.models import Product
from worker.demo.flower import http_status
from worker.demo.progress import ProgressBar
from worker.demo.stats import percentile
from worker.demo.summary import RunInfo, Summary

FLASHSALE = str(Path(sys.executable).with_name("flashsale"))
MARKER = "FLASHSALE_DEMO_TEST_MARKER"
RUN_TIMEOUT_S = 120
PR_SET_CHILD_SUBREAPER = 36


def _children() -> dict[int, str]:
    """Return pid -> command line of this process's live children (zombies excluded)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and state != "Z":
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


class Orphans:
    """Become the subreaper of the demo's descendants, so whatever outlives it is our child.

    A process the demo started and did not stop is re-parented to this test process
    when the demo exits, whatever its session, group or environment.
    """

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._before: set[int] = set()

    def __enter__(self) -> Orphans:
        self._before = set(_children())
        assert self._libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self._new():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        self._reap(timeout_s=5.0)

    def assert_none_left(self, *, timeout_s: float = 5.0) -> None:
        """Fail unless every process the demo started is gone (killed ones may need a moment)."""
        deadline = time.monotonic() + timeout_s
        while (left := self._new()) and time.monotonic() < deadline:
            self._reap(timeout_s=0.0)
            time.sleep(0.1)
        assert not left, f"the demo left processes running: {left}"

    def _new(self) -> dict[int, str]:
        return {pid: cmd for pid, cmd in _children().items() if pid not in self._before}

    def _reap(self, *, timeout_s: float) -> None:
        """Collect the exit status of adopted orphans (they are no Popen's business)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for pid in _zombie_children() - self._before:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            if not self._new() or time.monotonic() >= deadline:
                return
            time.sleep(0.05)


def _zombie_children() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == os.getpid() and state == "Z":
                found.add(int(entry))
    return found


def _marked(marker: str) -> list[str]:
    """Return ``pid cmdline`` of every live process whose environment carries ``marker``.

    redis-server rewrites its environment area (its process title): this finds the
    Celery and Flower processes, not the redis-servers.
    """
    found = []
    needle = f"{MARKER}={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and cmdline:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry} {command}")
    return found


@pytest.fixture
def orphans() -> Iterator[Orphans]:
    """Catch (and finally kill) every process a demo leaves behind."""
    with Orphans() as watch:
        yield watch


@pytest.fixture
def marker() -> str:
    """A fresh value of the marker variable given to the demo."""
    return uuid.uuid4().hex


def _env(marker: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.pop("FLOWER_BASIC_AUTH", None)
    return {**env, MARKER: marker, **extra}


def _run_demo(marker: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLASHSALE, "demo", *args],
        env=_env(marker, **env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def _check_summary(summary: dict[str, object], orders: int) -> None:
    for key in ("orders", "confirmed", "rejected", "failed", "pending", "oversold", "republished"):
        assert isinstance(summary[key], int), key
    for key in ("duration_s", "orders_per_s"):
        assert isinstance(summary[key], float), key
    assert summary["orders"] == orders
    assert summary["pending"] == 0 and summary["oversold"] == 0 and summary["unsent"] == 0
    assert summary["confirmed"] + summary["rejected"] + summary["failed"] == orders  # type: ignore[operator]
    assert summary["ledger_ok"] is True and summary["problems"] == []
    assert summary["republished"] == 0  # the relay ran (beat) and had nothing to do
    # Demand is several times the stock: the sale sells out.
    assert summary["units_sold"] == summary["units_on_sale"]
    assert summary["confirmed"] > 0 and summary["rejected"] > 0  # type: ignore[operator]
    assert summary["lock_wait_samples"] > 0  # type: ignore[operator]
    assert summary["lock_wait_p50_ms"] <= summary["lock_wait_p99_ms"]  # type: ignore[operator]


@pytest.mark.slow
def test_demo_json_on_sqlite_keeps_every_invariant_and_leaves_nothing(
    marker: str, orphans: Orphans
) -> None:
    result = _run_demo(marker, "--orders", "300", "--json", "--workers", "2", "--seed", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # one JSON object, nothing else on stdout
    summary = json.loads(lines[0])
    _check_summary(summary, 300)
    assert summary["database"].startswith("SQLite")
    assert "300/300 decided" in result.stderr  # the progress bar went to stderr
    orphans.assert_none_left()


@pytest.mark.slow
def test_demo_on_postgresql_migrates_and_leaves_other_rows_alone(
    marker: str, orphans: Orphans, empty_database_url: str
) -> None:
    from tasks.migrate import upgrade

    upgrade(empty_database_url)
    engine = create_db_engine(empty_database_url)
    try:
        with session_factory(engine).begin() as session:
            session.add(Product(sku="KEEP-ME", name="keep", stock=7, initial_stock=7, fence=3))
        result = _run_demo(
            marker, "--orders", "200", "--json", "--skus", "2", DATABASE_URL=empty_database_url
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout)
        _check_summary(summary, 200)
        assert summary["database"].startswith("PostgreSQL")
        with session_factory(engine)() as session:
            kept = session.get(Product, "KEEP-ME")
            demo_skus = [p.sku for p in session.query(Product) if p.sku != "KEEP-ME"]
        assert kept is not None and (kept.stock, kept.fence) == (7, 3)
        assert len(demo_skus) == 2 and all(sku.startswith("DEMO-") for sku in demo_skus)
    finally:
        engine.dispose()
    orphans.assert_none_left()


@pytest.mark.slow
def test_demo_table_reports_the_sale(marker: str, orphans: Orphans) -> None:
    result = _run_demo(marker, "--orders", "120", "--skus", "1", "--workers", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    for label in ("orders", "confirmed", "still pending", "oversold units", "orders per second"):
        assert label in table
    assert "lock wait p50 / p99" in table and "Invariants: OK" in table
    orphans.assert_none_left()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["demo process", "whole process group (terminal Ctrl-C)"])
def test_ctrl_c_stops_the_demo_and_every_child(marker: str, orphans: Orphans, target: str) -> None:
    demo = subprocess.Popen(
        [FLASHSALE, "demo", "--orders", "50000", "--flower"],
        env=_env(marker),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        seen = _read_until(demo, "firing", timeout_s=60)
        flower_url = next(
            word for line in seen for word in line.split() if word.startswith("http://127.0.0.1:")
        )
        assert http_status(f"{flower_url}/api/workers") == 401  # Flower up, behind auth
        assert any("celery" in line and "worker" in line for line in _marked(marker))
        time.sleep(1.0)  # orders are flowing
        if target == "demo process":
            demo.send_signal(signal.SIGINT)
        else:
            os.killpg(demo.pid, signal.SIGINT)
        _, stderr = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    assert http_status(f"{flower_url}/api/workers") == 0  # Flower is gone
    orphans.assert_none_left()


def _read_until(process: subprocess.Popen[str], text: str, *, timeout_s: float) -> list[str]:
    """Read the process's stderr lines until one contains ``text``; return them all."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"the demo exited before {text!r}:\n{''.join(lines)}")
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no {text!r} within {timeout_s} s:\n{''.join(lines)}")


def test_missing_redis_server_is_explained(marker: str, orphans: Orphans, tmp_path: Path) -> None:
    result = _run_demo(marker, "--orders", "10", PATH=str(tmp_path))
    assert result.returncode == 3
    assert "redis-server was not found" in result.stderr
    assert "apt-get install redis-server" in result.stderr
    assert not result.stdout
    orphans.assert_none_left()


def test_invalid_options_are_refused() -> None:
    for args in (["--orders", "0"], ["--multi-line", "1.5"], ["--timeout", "-1"]):
        result = subprocess.run(
            [FLASHSALE, "demo", *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, args
        assert "demo: error" in result.stderr or "error:" in result.stderr


def test_percentile_is_nearest_rank_over_the_values_given() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def _summary(**changes: object) -> Summary:
    fields: dict[str, object] = {
        "run": RunInfo(
            skus=1, stock_per_sku=5, workers=1, concurrency=1, producers=1, database="x"
        ),
        "orders": 10,
        "unsent": 0,
        "confirmed": 5,
        "rejected": 5,
        "failed": 0,
        "pending": 0,
        "oversold": 0,
        "initial_units": 5,
        "sold_units": 5,
        "duration_s": 2.0,
        "timed_out": False,
        "lock_waits_ms": [1.0, 2.0],
        "ledger_problems": [],
    }
    fields.update(changes)
    return Summary(**fields)  # type: ignore[arg-type]


def test_summary_flags_every_broken_invariant() -> None:
    assert _summary().problems() == []
    assert json.loads(_summary().to_json())["orders_per_s"] == 5.0
    broken = _summary(oversold=2, pending=1, ledger_problems=["A: ledger moved 3"])
    problems = broken.problems()
    assert len(problems) == 3
    data = json.loads(broken.to_json())
    assert data["ledger_ok"] is False and data["oversold"] == 2
    assert "Invariants BROKEN" in broken.table()


def test_progress_bar_writes_a_few_lines_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(100, stream=stream)
    for decided in range(0, 101):
        bar.update({"confirmed": decided}, elapsed_s=1.0)
    bar.finish({"confirmed": 100}, elapsed_s=1.0)
    lines = stream.getvalue().splitlines()
    assert 2 <= len(lines) <= 12
    assert lines[-1].startswith("[" + "#" * 30 + "] 100/100 decided")


SHIELD_PROBE = """
import os, signal
from worker.demo import interrupts
interrupts.install()
recorded = []
try:
    with interrupts.shielded():
        os.kill(os.getpid(), signal.SIGTERM)
        recorded.append("child")  # still runs: the signal waits for the block's end
    print("not reached")
except KeyboardInterrupt:
    print("interrupted after", recorded)
interrupts.ignore_from_now()
os.kill(os.getpid(), signal.SIGINT)
print("clean-up not interrupted")
"""


def test_a_signal_waits_until_the_started_child_is_recorded() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SHIELD_PROBE], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "interrupted after ['child']",
        "clean-up not interrupted",
    ]
