"""A test needs only the services it uses: a missing one fails that test loudly, no other.

Each case runs pytest in a child process with one service made unreachable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from worker.demo.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PURE_TESTS = "tests/locking/test_timing.py"
PG_TEST = "tests/tasks/test_migrations.py::test_upgrade_twice_is_harmless"
REDIS_TEST = "tests/locking/test_exclusion.py"


def run_pytest(target: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run pytest on ``target`` from the repository root with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", target],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def closed_pg() -> dict[str, str]:
    return {"TEST_PG_ADMIN_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"}


def test_pure_tests_run_without_postgresql() -> None:
    done = run_pytest(PURE_TESTS, closed_pg())
    assert done.returncode == 0, done.stdout[-3000:]


def test_a_postgresql_test_fails_with_a_clear_message_when_postgresql_is_down() -> None:
    done = run_pytest(PG_TEST, closed_pg())
    assert done.returncode == 1, done.stdout[-3000:]
    assert "PostgreSQL is required by this test and is not reachable" in done.stdout
    assert "skipped" not in done.stdout


def test_a_redis_test_fails_with_the_install_hint_when_redis_server_is_missing() -> None:
    done = run_pytest(REDIS_TEST, {"PATH": str(Path(sys.executable).parent)})
    assert done.returncode == 1, done.stdout[-3000:]
    assert "redis-server was not found on PATH" in done.stdout
